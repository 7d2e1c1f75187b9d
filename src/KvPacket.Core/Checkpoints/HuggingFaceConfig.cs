using System.Text.Json;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Reads a transformers <c>config.json</c> for Llama and Qwen2 into a <see cref="ModelConfig"/>. Accepts both the
/// transformers 4 spelling (<c>rope_theta</c>, <c>rope_scaling</c>) and the transformers 5 one (<c>rope_parameters</c>).
/// </summary>
public static class HuggingFaceConfig
{
    /// <summary>Parses the config file at <paramref name="path"/>.</summary>
    public static ModelConfig Read(string path)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(path, "config", $"is not valid JSON ({e.Message})", e);
        }
        using (document)
        {
            try
            {
                return Parse(path, document.RootElement);
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new CheckpointFormatException(path, "config", $"a field has the wrong JSON type ({e.Message})", e);
            }
        }
    }

    /// <summary>Parses an already-loaded config object; <paramref name="path"/> is used in errors.</summary>
    public static ModelConfig Parse(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new CheckpointFormatException(path, "config", "is not a JSON object");

        string modelType = root.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String ? mt.GetString()! : "";
        if (modelType is not ("llama" or "qwen2"))
            throw new CheckpointFormatException(path, "model_type", $"'{modelType}' is not supported (llama, qwen2)");

        int Integer(string field, JsonElement value) => value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int n)
            ? n
            : throw new CheckpointFormatException(path, field, $"{value.GetRawText()} is not a 32-bit integer");
        int Required(string field) => root.TryGetProperty(field, out var value)
            ? Integer(field, value)
            : throw new CheckpointFormatException(path, field, "is missing");
        int? Optional(string field) =>
            root.TryGetProperty(field, out var value) && value.ValueKind != JsonValueKind.Null ? Integer(field, value) : null;
        bool Flag(string field) => !root.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null ? false
            : value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean()
            : throw new CheckpointFormatException(path, field, $"{value.GetRawText()} is not true or false");
        double Real(JsonElement value, string field) => value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out double d) && double.IsFinite(d)
            ? d
            : throw new CheckpointFormatException(path, field, $"{value.GetRawText()} is not a finite number");

        int hidden = Required("hidden_size");
        int heads = Required("num_attention_heads");
        var rope = root.TryGetProperty("rope_parameters", out var parameters) && parameters.ValueKind == JsonValueKind.Object ? parameters : (JsonElement?)null;
        double theta = rope is { } p && p.TryGetProperty("rope_theta", out var t5) ? Real(t5, "rope_parameters.rope_theta")
            : root.TryGetProperty("rope_theta", out var t4) ? Real(t4, "rope_theta")
            : 10000;
        var scalingElement = rope ?? (root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs : null);

        return new ModelConfig
        {
            Architecture = modelType,
            HiddenSize = hidden,
            IntermediateSize = Required("intermediate_size"),
            LayerCount = Required("num_hidden_layers"),
            HeadCount = heads,
            KvHeadCount = Optional("num_key_value_heads") ?? heads,
            HeadDim = Optional("head_dim") ?? (heads > 0 ? hidden / heads : 0),
            VocabSize = Required("vocab_size"),
            MaxContextLength = Required("max_position_embeddings"),
            NormEpsilon = root.TryGetProperty("rms_norm_eps", out var eps) ? Real(eps, "rms_norm_eps") : 1e-6,
            RopeTheta = theta,
            RopeScaling = scalingElement is { } s ? ReadScaling(path, s) : null,
            RopeStyle = RopeStyle.RotateHalf,
            TiedEmbeddings = Flag("tie_word_embeddings"),
            AttentionBias = modelType == "qwen2" || Flag("attention_bias"),
            BosTokenId = Optional("bos_token_id"),
            EosTokenIds = root.TryGetProperty("eos_token_id", out var eos) ? eos.ValueKind switch
            {
                JsonValueKind.Number => [Integer("eos_token_id", eos)],
                JsonValueKind.Array => eos.EnumerateArray().Select(e => Integer("eos_token_id", e)).ToArray(),
                JsonValueKind.Null => [],
                _ => throw new CheckpointFormatException(path, "eos_token_id", $"{eos.GetRawText()} is not an id or a list of ids"),
            } : [],
        };
    }

    /// <summary>Writes <paramref name="config"/> as a transformers 4 style <c>config.json</c>.</summary>
    public static void Write(ModelConfig config, string path)
    {
        if (config.RopeFrequencyFactors is not null)
            throw new NotSupportedException("RoPE frequency factors (a GGUF rope_freqs tensor) have no config.json form; write this model as GGUF");
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteStartArray("architectures");
        json.WriteStringValue(config.Architecture == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
        json.WriteEndArray();
        json.WriteString("model_type", config.Architecture);
        json.WriteNumber("hidden_size", config.HiddenSize);
        json.WriteNumber("intermediate_size", config.IntermediateSize);
        json.WriteNumber("num_hidden_layers", config.LayerCount);
        json.WriteNumber("num_attention_heads", config.HeadCount);
        json.WriteNumber("num_key_value_heads", config.KvHeadCount);
        json.WriteNumber("head_dim", config.HeadDim);
        json.WriteNumber("vocab_size", config.VocabSize);
        json.WriteNumber("max_position_embeddings", config.MaxContextLength);
        json.WriteNumber("rms_norm_eps", config.NormEpsilon);
        json.WriteNumber("rope_theta", config.RopeTheta);
        if (config.RopeScaling is { } scaling)
        {
            json.WriteStartObject("rope_scaling");
            json.WriteString("rope_type", "llama3");
            json.WriteNumber("factor", scaling.Factor);
            json.WriteNumber("low_freq_factor", scaling.LowFrequencyFactor);
            json.WriteNumber("high_freq_factor", scaling.HighFrequencyFactor);
            json.WriteNumber("original_max_position_embeddings", scaling.OriginalContextLength);
            json.WriteEndObject();
        }
        json.WriteBoolean("tie_word_embeddings", config.TiedEmbeddings);
        if (config.Architecture == "llama") json.WriteBoolean("attention_bias", config.AttentionBias);
        if (config.BosTokenId is { } bos) json.WriteNumber("bos_token_id", bos);
        if (config.EosTokenIds.Count == 1) json.WriteNumber("eos_token_id", config.EosTokenIds[0]);
        json.WriteString("torch_dtype", "float32");
        json.WriteEndObject();
    }

    private static RopeScaling? ReadScaling(string path, JsonElement scaling)
    {
        string type = scaling.TryGetProperty("rope_type", out var rt) ? rt.GetString() ?? ""
            : scaling.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "default";
        if (type == "default") return null;
        if (type != "llama3") throw new CheckpointFormatException(path, "rope_scaling.rope_type", $"'{type}' is not supported (default, llama3)");
        double Field(string name) => scaling.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d)
            ? d > 0 && d < 1e9 ? d : throw new CheckpointFormatException(path, $"rope_scaling.{name}", $"{d} is not in (0, 1e9)")
            : throw new CheckpointFormatException(path, $"rope_scaling.{name}", "is missing or not a finite number");
        double low = Field("low_freq_factor"), high = Field("high_freq_factor");
        if (high <= low) throw new CheckpointFormatException(path, "rope_scaling.high_freq_factor", $"{high} must exceed low_freq_factor {low}");
        return new RopeScaling(Field("factor"), low, high, (int)Field("original_max_position_embeddings"));
    }
}
