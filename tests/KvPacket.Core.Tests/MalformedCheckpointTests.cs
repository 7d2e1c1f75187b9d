using System.Text.Json.Nodes;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using Xunit;

namespace KvPacket.Tests;

public class MalformedCheckpointTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    [Fact]
    public void A_truncated_llama2c_file_names_the_file_and_the_tensor_it_ran_out_in()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "cut.bin");
        File.WriteAllBytes(path, File.ReadAllBytes(Stories)[..300_000]);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal(path, error.File);
        Assert.Contains("truncated", error.Message);
        Assert.Equal("wo", error.Field);   // 300 kB ends inside the wo stack of stories260K (it spans 296,220..378,140)
    }

    [Fact]
    public void A_llama2c_header_with_nonsense_values_is_rejected_by_field()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "bad.bin");
        var bytes = File.ReadAllBytes(Stories);
        BitConverter.GetBytes(-7).CopyTo(bytes, 2 * 4);   // n_layers
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal("n_layers", error.Field);
    }

    [Fact]
    public void A_llama2c_header_whose_shapes_do_not_match_the_file_is_rejected()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "bad.bin");
        var bytes = File.ReadAllBytes(Stories);
        BitConverter.GetBytes(-100).CopyTo(bytes, 5 * 4);   // vocab_size −100: an unshared classifier of 100 rows
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal("header", error.Field);
    }

    [Fact]
    public void A_GGUF_with_the_wrong_magic_is_not_mistaken_for_GGUF_and_a_bad_version_is_named()
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        string path = Path.Combine(temp.Path, "m.gguf");
        CheckpointExporter.WriteGguf(model, path, DType.F32);
        var bytes = File.ReadAllBytes(path);
        bytes[4] = 9;   // version 9
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<CheckpointFormatException>(() => GgufReader.Read(path));
        Assert.Equal("version", error.Field);

        bytes[0] = (byte)'X';
        File.WriteAllBytes(path, bytes);
        Assert.Equal("magic", Assert.Throws<CheckpointFormatException>(() => GgufReader.Read(path)).Field);
    }

    [Fact]
    public void A_truncated_GGUF_names_the_tensor_whose_data_is_missing()
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        string path = Path.Combine(temp.Path, "m.gguf");
        CheckpointExporter.WriteGguf(model, path, DType.F32);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 1000)]);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal("blk.4.ffn_down.weight", error.Field);  // the last 1000 bytes hold the end of ffn_down and all of output_norm
    }

    [Theory]
    [InlineData(-(1L << 40))]   // once an AccessViolationException in WeightTensor.ReadRows
    [InlineData(-1L)]
    [InlineData(-(1L << 20))]
    [InlineData(long.MaxValue - 31)]
    public void A_GGUF_tensor_offset_outside_the_data_region_is_named_not_read(long offset)
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        string path = Path.Combine(temp.Path, "m.gguf");
        CheckpointExporter.WriteGguf(model, path, DType.F32);
        var bytes = File.ReadAllBytes(path);
        // Tensor info: name, uint32 dimension count, uint64 dimensions, uint32 type, uint64 offset.
        byte[] name = "output_norm.weight"u8.ToArray();
        int at = bytes.AsSpan().IndexOf(name) + name.Length;
        int dimensions = BitConverter.ToInt32(bytes, at);
        BitConverter.GetBytes(offset).CopyTo(bytes, at + 4 + 8 * dimensions + 4);
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal("output_norm.weight", error.Field);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(1 << 30)]
    [InlineData("32")]
    [InlineData(32.0f)]
    public void A_GGUF_alignment_that_is_not_a_small_power_of_two_is_named(object alignment)
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "m.gguf");
        GgufWriter.Write(path, [new("general.architecture", "llama"), new("general.alignment", alignment)], []);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(path));

        Assert.Equal("general.alignment", error.Field);
    }

    [Fact]
    public void A_Hugging_Face_directory_missing_a_tensor_names_it()
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        CheckpointExporter.WriteHuggingFace(model, temp.Path, DType.F32);
        RewriteSafetensors(temp.Path, tensors => tensors.Where(t => t.Name != "model.layers.3.mlp.up_proj.weight").ToList());

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));

        Assert.Equal("model.layers.3.mlp.up_proj.weight", error.Field);
        Assert.Contains("missing", error.Message);
    }

    [Theory]
    [InlineData((ushort)0x7C00)] // +infinity
    [InlineData((ushort)0xFE01)] // a NaN
    public void An_f16_weight_that_is_not_finite_is_refused_naming_the_tensor_and_the_value(ushort bits)
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        CheckpointExporter.WriteHuggingFace(model, temp.Path, DType.F16);
        string path = Path.Combine(temp.Path, "model.safetensors");
        List<TensorToWrite> tensors;
        using (var file = SafetensorsFile.Open(path))
            tensors = file.Tensors.Values.Select(t =>
            {
                var values = new Half[t.ElementCount];
                var widened = new float[t.ElementCount];
                t.ReadRows(0, t.Rows, widened);
                for (int i = 0; i < widened.Length; i++) values[i] = (Half)widened[i];
                if (t.Name == "model.layers.2.mlp.down_proj.weight") values[77] = BitConverter.UInt16BitsToHalf(bits);
                long[] shape = t.Name.Contains("norm") ? [t.Columns] : [t.Rows, t.Columns];
                return new TensorToWrite(t.Name, DType.F16, shape, stream => stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan())));
            }).ToList();
        SafetensorsWriter.Write(path, tensors);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));
        Assert.Equal("model.layers.2.mlp.down_proj.weight", error.Field);
        Assert.Contains($"f16 value 77 (bits 0x{bits:x4}) is infinite or NaN", error.Message);
    }

    [Fact]
    public void A_tensor_of_the_wrong_shape_is_named_with_both_shapes()
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        CheckpointExporter.WriteHuggingFace(model, temp.Path, DType.F32);
        RewriteSafetensors(temp.Path, tensors => tensors.Select(t => t.Name == "model.layers.1.self_attn.k_proj.weight"
            ? t with { Shape = [t.Shape[1], t.Shape[0]] }
            : t).ToList());

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));

        Assert.Equal("model.layers.1.self_attn.k_proj.weight", error.Field);
        Assert.Contains("expected shape [32, 64], found [64, 32]", error.Message);
    }

    [Fact]
    public void A_safetensors_file_cut_short_is_reported_as_truncated()
    {
        using var temp = Fixtures.TempDirectory();
        using var model = CheckpointLoader.Load(Stories);
        CheckpointExporter.WriteHuggingFace(model, temp.Path, DType.F32);
        string file = Path.Combine(temp.Path, "model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 2)]);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));

        Assert.Equal(file, error.File);
        Assert.Contains("truncated", error.Message);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("num_attention_heads")]
    [InlineData("vocab_size")]
    public void A_config_missing_a_field_names_the_field(string field)
    {
        using var temp = Fixtures.TempDirectory();
        foreach (var f in Directory.GetFiles(Fixtures.PathOf("tiny-qwen2"))) File.Copy(f, Path.Combine(temp.Path, Path.GetFileName(f)));
        string configPath = Path.Combine(temp.Path, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config.Remove(field);
        File.WriteAllText(configPath, config.ToJsonString());

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));

        Assert.Equal(configPath, error.File);
        Assert.Equal(field, error.Field);
    }

    [Fact]
    public void Both_rope_spellings_give_the_same_config()
    {
        using var temp = Fixtures.TempDirectory();
        string v5 = Fixtures.PathOf("tiny-llama3/config.json");
        var config = JsonNode.Parse(File.ReadAllText(v5))!.AsObject();
        var rope = config["rope_parameters"]!.AsObject();
        config.Remove("rope_parameters");
        config["rope_theta"] = rope["rope_theta"]!.GetValue<double>();
        rope.Remove("rope_theta");
        config["rope_scaling"] = rope;
        string v4 = Path.Combine(temp.Path, "config.json");
        File.WriteAllText(v4, config.ToJsonString());

        var a = HuggingFaceConfig.Read(v5);
        var b = HuggingFaceConfig.Read(v4);

        Assert.Equal(new RopeScaling(8, 1, 4, 256), a.RopeScaling);
        Assert.Equal(500000, a.RopeTheta);
        Assert.Equal(a with { EosTokenIds = [] }, b with { EosTokenIds = [] });
    }

    [Theory]
    [InlineData("shape", "[9223372036854775808, 64]")]
    [InlineData("shape", "[-1, 64]")]
    [InlineData("shape", "\"x\"")]
    [InlineData("data_offsets", "[0, 9223372036854775808]")]
    [InlineData("data_offsets", "[-8, 0]")]
    public void A_safetensors_header_with_absurd_numbers_names_the_tensor(string key, string value)
    {
        using var temp = Fixtures.TempDirectory();
        using (var model = CheckpointLoader.Load(Stories)) CheckpointExporter.WriteHuggingFace(model, temp.Path, DType.F32);
        string path = Path.Combine(temp.Path, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        int length = (int)BitConverter.ToInt64(bytes, 0);
        var header = JsonNode.Parse(bytes.AsSpan(8, length))!;
        const string tensor = "model.layers.2.mlp.down_proj.weight";
        header[tensor]![key] = JsonNode.Parse(value);
        byte[] rewritten = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((long)rewritten.Length), .. rewritten, .. bytes.AsSpan(8 + length)]);

        var error = Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));

        Assert.Equal(tensor, error.Field);
    }

    private static void RewriteSafetensors(string directory, Func<List<TensorToWrite>, List<TensorToWrite>> edit)
    {
        string path = Path.Combine(directory, "model.safetensors");
        List<TensorToWrite> tensors;
        using (var file = SafetensorsFile.Open(path)) tensors = file.Tensors.Values.Select(TensorCopy.AsF32).ToList();
        SafetensorsWriter.Write(path, edit(tensors));
    }
}
