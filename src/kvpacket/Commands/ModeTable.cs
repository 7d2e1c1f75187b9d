using KvPacket.Engine.Rag;

namespace KvPacket.Cli.Commands;

/// <summary>The per-mode table that <c>eval</c> and <c>demo</c> print.</summary>
internal static class ModeTable
{
    public static void Print(IEnumerable<ModeScore> scores)
    {
        Console.WriteLine($"{"mode",-26} {"KL(full‖mode)",14} {"top-1 agree",12} {"TTFT ms",9} {"doc MFLOP",10} {"packet KV kB",13}");
        foreach (var s in scores)
            Console.WriteLine($"{s.Label,-26} {s.MeanKl,14:F4} {s.TopOneAgreement,12:P1} {s.MeanTtftSeconds * 1e3,9:F2} {s.MeanDocumentFlops / 1e6,10:F1} {s.MeanPacketKvBytes / 1e3,13:F1}");
    }

    public static object ToJson(ModeScore s) => new
    {
        mode = s.Mode.ToString(), variant = s.Variant, kl = s.MeanKl, top1 = s.TopOneAgreement, ttft_s = s.MeanTtftSeconds,
        document_flops = s.MeanDocumentFlops, packet_kv_bytes = s.MeanPacketKvBytes,
    };
}
