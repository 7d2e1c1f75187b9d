using System.IO.Hashing;
using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Storage;
using KvPacket.Core.Tokenization;
using KvPacket.Daemon;
using KvPacket.Store;

namespace KvPacket.Fuzz;

/// <summary>
/// One fuzz target per reader of untrusted bytes. A target feeds the bytes to the reader as a user's file or request
/// would reach it and lets only that reader's own format error through quietly; any other exception, a crash or a hang
/// is a finding. The same targets replay the regression corpus in CI (tests/fixtures/fuzz).
/// </summary>
public static class FuzzTargets
{
    /// <summary>Target names, each a folder of the seed and regression corpora.</summary>
    public static readonly string[] Names = ["llama2c", "safetensors", "gguf", "hf-config", "sentencepiece", "tokenizer-json", "tiktoken", "store-codecs", "request"];

    private static readonly string Scratch = Directory.CreateTempSubdirectory("kvpacket-fuzz-").FullName;

    /// <summary>Text every loaded tokenizer encodes and decodes: words, digits, whitespace runs, several scripts.</summary>
    private const string Probe = "Hello, world! 12345  the  tokenizer's test\n\tПривет 漢字 한국어 مرحبا 👩‍💻 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!";

    /// <summary>Runs <paramref name="target"/> on <paramref name="input"/>; returns the expected error it gave, or null when the input was accepted.</summary>
    public static Exception? Run(string target, byte[] input)
    {
        try
        {
            switch (target)
            {
                case "llama2c": Llama2CCheckpointReader.Read(ScratchFile(input, "model.bin")).Dispose(); break;
                case "safetensors": SafetensorsFile.Open(ScratchFile(input, "model.safetensors")).Dispose(); break;
                case "gguf": GgufReader.Read(ScratchFile(input, "model.gguf")).Dispose(); break;
                case "hf-config": HuggingFaceConfig.Read(ScratchFile(input, "config.json")); break;
                case "sentencepiece": Exercise(SentencePieceTokenizer.Load(ScratchFile(input, "tokenizer.model"))); break;
                case "tokenizer-json": Exercise(ByteLevelBpeTokenizer.LoadHuggingFace(ScratchFile(input, "tokenizer.json"))); break;
                case "tiktoken": Exercise(ByteLevelBpeTokenizer.LoadTiktoken(ScratchFile(input, "tokenizer.model"))); break;
                case "store-codecs": StoreCodecs(input); break;
                case "request": Request(input); break;
                default: throw new ArgumentException($"unknown fuzz target '{target}' (one of {string.Join(", ", Names)})");
            }
            return null;
        }
        catch (Exception e) when (IsFormatError(target, e))
        {
            return e;
        }
    }

    /// <summary>The errors <paramref name="target"/>'s reader may give for bad input: its own, naming what is wrong.</summary>
    public static bool IsFormatError(string target, Exception e) => target switch
    {
        "llama2c" or "safetensors" or "gguf" or "hf-config" => e is CheckpointFormatException,
        "sentencepiece" or "tokenizer-json" or "tiktoken" => e is TokenizerFormatException or InvalidDataException,
        "store-codecs" => e is CorruptRecordException,
        "request" => e is ApiError { Status: >= 400 and < 500 },
        _ => false,
    };

    private static string ScratchFile(byte[] input, string name)
    {
        string path = Path.Combine(Scratch, name);
        File.WriteAllBytes(path, input);
        return path;
    }

    private static void Exercise(ITokenizer tokenizer)
    {
        int[] ids = tokenizer.Encode(Probe);
        tokenizer.Decode(ids);
        for (int id = 0; id < Math.Min(tokenizer.VocabSize, 512); id++) tokenizer.Decode([id]);
    }

    /// <summary>The first byte picks a store codec; checksums are made valid so the bytes reach the parser behind them.</summary>
    private static void StoreCodecs(byte[] input)
    {
        if (input.Length == 0) return;
        var body = input.AsSpan(1);
        switch (input[0] % 4)
        {
            case 0:
                var header = new byte[RecordHeader.Size];
                body[..Math.Min(body.Length, 88)].CopyTo(header);
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(88), XxHash3.HashToUInt64(header.AsSpan(0, 88)));
                RecordHeader.TryRead(header, out _, out _);
                break;
            case 1: ManifestCodec.Read(body, 0); break;
            case 2: AdapterCodec.Read(body, 0); break;
            default:
                string path = Path.Combine(Scratch, "index.snapshot");
                ChecksummedFile.Write(path, body);
                PacketIndex.TryLoad(path, out _);
                break;
        }
    }

    /// <summary>A completion request body as the daemon reads it: JSON that must be an object, then every field validated.</summary>
    private static void Request(byte[] input)
    {
        JsonDocument document;
        try { document = JsonDocument.Parse(input); }
        catch (JsonException) { throw new ApiError(400, "the body is not valid JSON"); }
        using (document)
            CompletionRequest.Parse(document.RootElement, RequestTokenizer ??= RequestTokenizerPath is { } path ? TokenizerLoader.Load(path) : null, bos: 1, maxTokens: 4096, context: 2048, model: "fuzz", packetMode: Engine.Rag.RagMode.Naive);
    }

    /// <summary>The tokenizer the request target parses text prompts and stop strings with (none: token ids only).</summary>
    public static ITokenizer? RequestTokenizer { get; set; }

    /// <summary>
    /// Where <see cref="RequestTokenizer"/> is loaded from on first use — inside the fuzzing loop, since instrumented
    /// code that runs before the fuzzer has mapped its coverage memory crashes.
    /// </summary>
    public static string? RequestTokenizerPath { get; set; }
}
