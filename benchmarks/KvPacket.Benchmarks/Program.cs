using BenchmarkDotNet.Running;

// dotnet run -c Release --project benchmarks/KvPacket.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(KvPacket.Benchmarks.MatMulBenchmarks).Assembly).Run(args);
