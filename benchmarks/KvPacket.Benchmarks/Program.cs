using BenchmarkDotNet.Running;

// dotnet run -c Release --project benchmarks/KvPacket.Benchmarks -- --filter '*'                 BenchmarkDotNet suites
// dotnet run -c Release --project benchmarks/KvPacket.Benchmarks -- vs-llamacpp [--shape S] [--dtype F16|BF16|F32|Q8_0|Q4_K|Q4_K_M|…] [--threads N] [--llamacpp-load None|MemoryMap]
if (args.Length > 0 && args[0] == "vs-llamacpp") return KvPacket.Benchmarks.LlamaCppComparison.Run(args[1..]);
BenchmarkSwitcher.FromAssembly(typeof(KvPacket.Benchmarks.MatMulBenchmarks).Assembly).Run(args);
return 0;
