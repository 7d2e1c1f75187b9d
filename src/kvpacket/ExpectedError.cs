namespace KvPacket.Cli;

/// <summary>The errors a user causes and fixes (a malformed or missing file, a bad argument, a full store or cache, a GPU that cannot run), as opposed to bugs.</summary>
internal static class ExpectedError
{
    public static bool Is(Exception e) => e switch
    {
        AggregateException { InnerExceptions.Count: 1 } a => Is(a.InnerException!),
        Core.Model.CheckpointFormatException or Core.Tokenization.TokenizerFormatException => true,
        InvalidDataException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException => true,
        ArgumentException or FormatException => true,
        NotSupportedException => true,   // a mode or an operation this backend or machine does not have
        Compute.Kv.KvCacheExhaustedException or Compute.Cuda.CudaException or Store.PacketStoreException => true,
        _ => false,
    };
}
