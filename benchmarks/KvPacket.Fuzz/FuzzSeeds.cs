using System.Buffers.Binary;
using System.Text;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Rag;
using KvPacket.Store;

namespace KvPacket.Fuzz;

/// <summary>
/// Small valid inputs for every target, written by our own writers (a few KB each, so the fuzzer runs fast and starts
/// from files the readers accept, reaching the code behind the first checks).
/// </summary>
public static class FuzzSeeds
{
    /// <summary>Writes DIRECTORY/TARGET/seed-* for every target.</summary>
    public static void Write(string directory)
    {
        string Folder(string target) => Directory.CreateDirectory(Path.Combine(directory, target)).FullName;
        var config = ModelCard.Find("stories260k").Config with
        {
            HiddenSize = 16, IntermediateSize = 32, LayerCount = 1, HeadCount = 2, KvHeadCount = 1, HeadDim = 8, VocabSize = 32, MaxContextLength = 64,
        };
        string model = Path.Combine(directory, "tmp-model");
        SyntheticCheckpoint.Write(config, DType.F32, model, seed: 1);
        File.Copy(Path.Combine(model, "model.safetensors"), Path.Combine(Folder("safetensors"), "seed-tiny"), overwrite: true);
        File.Copy(Path.Combine(model, "config.json"), Path.Combine(Folder("hf-config"), "seed-tiny"), overwrite: true);
        using (var checkpoint = CheckpointLoader.Load(model))
            CheckpointExporter.WriteGguf(checkpoint, Path.Combine(Folder("gguf"), "seed-tiny"), DType.F32);
        Directory.Delete(model, recursive: true);
        File.WriteAllBytes(Path.Combine(Folder("llama2c"), "seed-tiny"), Llama2C(dim: 8, hidden: 16, layers: 1, heads: 2, kvHeads: 2, vocab: 16, context: 8));

        // A byte-level BPE trained on a few lines, as tokenizer.json and as tiktoken ranks.
        string json = Path.Combine(Folder("tokenizer-json"), "seed-tiny");
        ByteLevelBpeTrainer.Train(["the cat sat on the mat", "the dog ate the cat's hat 123", "a tokenizer test, twice: a tokenizer test"], 300, ["<s>", "</s>"], json);
        var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(json);
        var ranks = new StringBuilder();
        for (int id = 0; id < tokenizer.VocabSize - 2; id++) ranks.Append(Convert.ToBase64String(tokenizer.TokenBytes(id))).Append(' ').Append(id).Append('\n');
        File.WriteAllText(Path.Combine(Folder("tiktoken"), "seed-tiny"), ranks.ToString());
        File.WriteAllBytes(Path.Combine(Folder("sentencepiece"), "seed-tiny"), SentencePieceModel());

        string store = Folder("store-codecs");
        File.WriteAllBytes(Path.Combine(store, "seed-header"), [0, .. new byte[88]]);
        var manifest = new byte[ManifestCodec.Size("kvpacket", 3, 2)];
        ManifestCodec.Write(manifest, "kvpacket", [5, 6, 7], [new RecordRef(4096, 512), new RecordRef(8192, 512)]);
        File.WriteAllBytes(Path.Combine(store, "seed-manifest"), [1, .. manifest]);
        File.WriteAllBytes(Path.Combine(store, "seed-adapter"), [2, .. AdapterCodec.Write(new Adapter("kvpacket", 3, new float[8], new float[8], new float[4]), 4)]);
        File.WriteAllBytes(Path.Combine(store, "seed-index"), [3, .. new byte[64]]);

        string request = Folder("request");
        string[] bodies =
        [
            """{"prompt":[1,5,6,7],"max_tokens":4}""",
            """{"prompt":"Hello there","max_tokens":8,"temperature":0.7,"top_p":0.9,"top_k":40,"seed":3,"stream":true}""",
            """{"prompt":[1,2],"packets":["0123456789abcdef0123456789abcdef"],"mode":"kvpacket","stop_token_ids":[2]}""",
            """{"prompt":[3],"documents":[[4,5,6],[7,8]],"mode":"naive","stop":["\n"],"max_tokens":2}""",
        ];
        for (int i = 0; i < bodies.Length; i++) File.WriteAllText(Path.Combine(request, $"seed-{i}"), bodies[i]);
    }

    /// <summary>A llama2.c checkpoint: 7 int32 dimensions, then exactly the float32 tensors they imply (shared classifier).</summary>
    private static byte[] Llama2C(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int context)
    {
        int headSize = dim / heads, kvDim = kvHeads * headSize;
        long floats = (long)vocab * dim + layers * (2L * dim + 2L * dim * dim + 2L * dim * kvDim + 3L * dim * hidden) + dim + context * headSize;
        var bytes = new byte[28 + floats * 4];
        int[] header = [dim, hidden, layers, heads, kvHeads, vocab, context];
        for (int i = 0; i < header.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * 4), header[i]);
        for (long i = 0; i < floats; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)(28 + i * 4)), (i % 7 - 3) * 0.01f);
        return bytes;
    }

    /// <summary>A SentencePiece ModelProto: unknown, BOS and EOS, the 256 byte pieces and a few merged pieces (BPE).</summary>
    private static byte[] SentencePieceModel()
    {
        var model = new MemoryStream();
        void Piece(string piece, float score, int type)
        {
            var body = new MemoryStream();
            byte[] text = Encoding.UTF8.GetBytes(piece);
            body.WriteByte(0x0A); Varint(body, (ulong)text.Length); body.Write(text);
            body.WriteByte(0x15); Span<byte> f = stackalloc byte[4]; BinaryPrimitives.WriteSingleLittleEndian(f, score); body.Write(f);
            body.WriteByte(0x18); Varint(body, (ulong)type);
            model.WriteByte(0x0A); Varint(model, (ulong)body.Length); model.Write(body.ToArray());
        }
        Piece("<unk>", 0, 2);
        Piece("<s>", 0, 3);
        Piece("</s>", 0, 3);
        for (int b = 0; b < 256; b++) Piece($"<0x{b:X2}>", 0, 6);
        string[] merged = ["▁", "▁t", "he", "▁the", "▁a", "at", "▁c", "▁cat", "s", "e", "t", "h", "a", "c"];
        for (int i = 0; i < merged.Length; i++) Piece(merged[i], -i, 1);
        var trainer = new MemoryStream();
        trainer.WriteByte(0x18); Varint(trainer, 2);   // model_type: BPE
        model.WriteByte(0x12); Varint(model, (ulong)trainer.Length); model.Write(trainer.ToArray());
        return model.ToArray();
    }

    private static void Varint(Stream stream, ulong value)
    {
        for (; value >= 0x80; value >>= 7) stream.WriteByte((byte)(value | 0x80));
        stream.WriteByte((byte)value);
    }
}
