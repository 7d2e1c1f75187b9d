using System.CommandLine;
using KvPacket.Store;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket store stats|list|verify|compact|export-adapter --store DIR</c>: look after a packet store.</summary>
internal static class StoreCommand
{
    public static Command Create()
    {
        var command = new Command("store", "Inspect, check and compact a packet store");
        command.Subcommands.Add(Stats());
        command.Subcommands.Add(List());
        command.Subcommands.Add(Verify());
        command.Subcommands.Add(Compact());
        command.Subcommands.Add(ExportAdapter());
        return command;
    }

    private static Command ExportAdapter()
    {
        var store = CommonOptions.Store();
        var model = CommonOptions.Model();
        var reference = new Argument<string>("adapter") { Description = "NAME or NAME@VERSION (default: the newest version)" };
        var output = new Option<string>("--out") { Description = "The .safetensors file to write (it ships beside the model)", Required = true };
        var command = new Command("export-adapter", "Write a stored adapter of a model to an adapter file") { store, model, reference, output };
        command.SetAction(parse =>
        {
            using var checkpoint = Core.Checkpoints.CheckpointLoader.Load(parse.GetValue(model)!);
            var fingerprint = Core.Model.ModelFingerprint.Of(checkpoint);
            using var opened = Open(parse.GetValue(store)!, readOnly: true);
            var adapter = opened.FindAdapter(parse.GetValue(reference)!, fingerprint)
                ?? throw new ArgumentException($"{parse.GetValue(store)} has no adapter '{parse.GetValue(reference)}' for this model");
            Engine.Rag.AdapterFile.Write(parse.GetValue(output)!, adapter, fingerprint, checkpoint.Config.HiddenSize);
            Console.WriteLine($"wrote {adapter.Id} version {adapter.Version} to {parse.GetValue(output)}");
            return 0;
        });
        return command;
    }

    private static Command Stats()
    {
        var store = CommonOptions.Store();
        var command = new Command("stats", "Packets, adapters, live and dead bytes") { store };
        command.SetAction(parse =>
        {
            using var opened = Open(parse.GetValue(store)!, readOnly: true);
            var stats = opened.Stats();
            Console.WriteLine($"packets   {stats.Packets}");
            Console.WriteLine($"adapters  {stats.Adapters}");
            Console.WriteLine($"live      {stats.LiveBytes / 1e6:F2} MB");
            Console.WriteLine($"log       {stats.LogBytes / 1e6:F2} MB ({stats.LiveRatio:P1} live; compaction would reclaim {stats.DeadBytes / 1e6:F2} MB)");
            return 0;
        });
        return command;
    }

    private static Command List()
    {
        var store = CommonOptions.Store();
        var skip = new Option<int>("--skip") { Description = "Packets to skip", DefaultValueFactory = _ => 0 };
        var take = new Option<int>("--take") { Description = "Packets to list", DefaultValueFactory = _ => 50 };
        var command = new Command("list", "Packets in the order they were stored, a page at a time") { store, skip, take };
        command.SetAction(parse =>
        {
            using var opened = Open(parse.GetValue(store)!, readOnly: true);
            Console.WriteLine($"{"id",-32}  {"model",-8}  {"adapter",-12}  {"kv",-4}  {"doc tok",7}  {"kv tok",6}  {"bytes",10}");
            foreach (var p in opened.List(parse.GetValue(skip), parse.GetValue(take)))
                Console.WriteLine($"{p.Id}  {p.Model.ToString()[..8]}  {p.Adapter,-12}  {p.Storage,-4}  {p.DocumentTokens,7}  {p.KvTokens,6}  {p.StoredBytes,10}");
            return 0;
        });
        return command;
    }

    private static Command Verify()
    {
        var store = CommonOptions.Store();
        var command = new Command("verify", "Read every record, check checksums and the index; exit 1 on damage") { store };
        command.SetAction(parse =>
        {
            using var opened = Open(parse.GetValue(store)!, readOnly: true);
            var result = opened.Verify();
            Console.WriteLine($"{result.Records} records, {result.Packets} packets, {result.Adapters} adapters: {(result.IsSound ? "sound" : $"{result.Problems.Count} problems")}");
            foreach (string problem in result.Problems) Console.WriteLine($"  {problem}");
            return result.IsSound ? 0 : 1;
        });
        return command;
    }

    private static Command Compact()
    {
        var store = CommonOptions.Store();
        var command = new Command("compact", "Reclaim deleted, superseded and torn records") { store };
        command.SetAction(parse =>
        {
            using var opened = Open(parse.GetValue(store)!, readOnly: false);
            var before = opened.Stats();
            var after = opened.CompactAsync().AsTask().GetAwaiter().GetResult();
            Console.WriteLine($"log {before.LogBytes / 1e6:F2} MB -> {after.LogBytes / 1e6:F2} MB; {after.Packets} packets kept");
            return 0;
        });
        return command;
    }

    private static PacketStore Open(string directory, bool readOnly) =>
        PacketStore.Open(directory, new PacketStoreOptions { ReadOnly = readOnly, Logger = ConsoleErrorLogger.Instance });
}
