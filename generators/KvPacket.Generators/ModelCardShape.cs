using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace KvPacket.Generators;

/// <summary>What the generator needs from one model card, read and checked; <see cref="Diagnostic"/> says what is wrong otherwise.</summary>
internal sealed class ModelCardShape : IEquatable<ModelCardShape>
{
    public string Path = "";
    public string Name = "";
    public int HiddenSize, IntermediateSize, LayerCount, HeadCount, KvHeadCount, HeadDim, VocabSize, MaxContextLength;
    public double RopeTheta, NormEpsilon;
    public double? ScalingFactor, LowFrequencyFactor, HighFrequencyFactor;
    public int OriginalContextLength;
    public Diagnostic? Diagnostic;

    /// <summary>The C# identifier for the card: "qwen2.5-0.5b" becomes "Qwen2_5_0_5b".</summary>
    public string Identifier
    {
        get
        {
            var builder = new StringBuilder();
            foreach (char c in Name) builder.Append(char.IsLetterOrDigit(c) ? c : '_');
            if (builder.Length == 0 || char.IsDigit(builder[0])) builder.Insert(0, 'M');
            builder[0] = char.ToUpperInvariant(builder[0]);
            return builder.ToString();
        }
    }

    /// <summary>RoPE inverse frequencies, Llama-3 scaling applied: the same float64 arithmetic as the runtime's.</summary>
    public double[] InverseFrequencies()
    {
        var result = new double[HeadDim / 2];
        for (int i = 0; i < result.Length; i++)
        {
            double frequency = Math.Pow(RopeTheta, -2.0 * i / HeadDim);
            if (ScalingFactor is double factor)
            {
                double wavelength = 2 * Math.PI / frequency;
                double low = OriginalContextLength / LowFrequencyFactor!.Value, high = OriginalContextLength / HighFrequencyFactor!.Value;
                if (wavelength > low) frequency /= factor;
                else if (wavelength >= high)
                {
                    double smooth = (OriginalContextLength / wavelength - LowFrequencyFactor.Value) / (HighFrequencyFactor.Value - LowFrequencyFactor.Value);
                    frequency = (1 - smooth) * frequency / factor + smooth * frequency;
                }
            }
            result[i] = frequency;
        }
        return result;
    }

    /// <summary>Reads a card; problems become <see cref="Diagnostic"/>.</summary>
    public static ModelCardShape Read(string path, string text)
    {
        var shape = new ModelCardShape { Path = path };
        string file = System.IO.Path.GetFileName(path);
        var location = Location.Create(path, new TextSpan(0, 0), new LinePositionSpan(default, default));
        Dictionary<string, object?>? card;
        try
        {
            card = CardJson.Parse(text) as Dictionary<string, object?>;
            if (card is null) return shape.Fail(CardDiagnostics.InvalidJson, location, file, "the top level is not an object");
        }
        catch (FormatException e)
        {
            return shape.Fail(CardDiagnostics.InvalidJson, location, file, e.Message);
        }

        Diagnostic? problem = null;
        string String(string field)
        {
            if (!card!.TryGetValue(field, out object? value)) { problem ??= Diagnostic.Create(CardDiagnostics.MissingField, location, file, field); return ""; }
            if (value is string s && s.Length > 0) return s;
            problem ??= Diagnostic.Create(CardDiagnostics.BadValue, location, file, field, "must be a non-empty string");
            return "";
        }
        double Number(string field, bool required = true, double fallback = 0)
        {
            if (!card!.TryGetValue(field, out object? value) || value is null)
            {
                if (required) problem ??= Diagnostic.Create(CardDiagnostics.MissingField, location, file, field);
                return fallback;
            }
            if (value is double d && d > 0) return d;
            problem ??= Diagnostic.Create(CardDiagnostics.BadValue, location, file, field, $"must be a positive number, not {Describe(value)}");
            return fallback;
        }
        int Integer(string field, bool required = true, int fallback = 0)
        {
            double d = Number(field, required, fallback);
            if (d == Math.Floor(d) && d <= int.MaxValue) return (int)d;
            problem ??= Diagnostic.Create(CardDiagnostics.BadValue, location, file, field, $"must be a positive integer, not {d.ToString(CultureInfo.InvariantCulture)}");
            return fallback;
        }

        shape.Name = String("name");
        shape.HiddenSize = Integer("hidden_size");
        shape.IntermediateSize = Integer("intermediate_size");
        shape.LayerCount = Integer("num_hidden_layers");
        shape.HeadCount = Integer("num_attention_heads");
        shape.KvHeadCount = Integer("num_key_value_heads", required: false, fallback: shape.HeadCount);
        shape.HeadDim = Integer("head_dim", required: false, fallback: shape.HeadCount > 0 ? shape.HiddenSize / shape.HeadCount : 0);
        shape.VocabSize = Integer("vocab_size");
        shape.MaxContextLength = Integer("max_position_embeddings");
        shape.RopeTheta = Number("rope_theta", required: false, fallback: 10000);
        shape.NormEpsilon = Number("rms_norm_eps");
        if (card.TryGetValue("rope_scaling", out object? scaling) && scaling is not null)
        {
            if (scaling is not Dictionary<string, object?> s || !(s.TryGetValue("rope_type", out object? type) && type as string == "llama3"))
                problem ??= Diagnostic.Create(CardDiagnostics.BadValue, location, file, "rope_scaling", "must be a \"llama3\" rope_scaling object (the only scaling supported)");
            else
            {
                var inner = card;
                card = s;
                shape.ScalingFactor = Number("factor");
                shape.LowFrequencyFactor = Number("low_freq_factor");
                shape.HighFrequencyFactor = Number("high_freq_factor");
                shape.OriginalContextLength = Integer("original_max_position_embeddings");
                card = inner;
            }
        }
        if (problem is not null) return shape.Fail(problem);

        if (shape.HeadCount % shape.KvHeadCount != 0)
            return shape.Fail(CardDiagnostics.InconsistentShape, location, file, $"num_attention_heads ({shape.HeadCount}) is not a multiple of num_key_value_heads ({shape.KvHeadCount})");
        if (shape.HeadDim % 2 != 0)
            return shape.Fail(CardDiagnostics.InconsistentShape, location, file, $"head_dim ({shape.HeadDim}) must be even for RoPE");
        if (shape.HighFrequencyFactor <= shape.LowFrequencyFactor)
            return shape.Fail(CardDiagnostics.InconsistentShape, location, file, "rope_scaling.high_freq_factor must exceed low_freq_factor");
        return shape;
    }

    private static string Describe(object? value) => value switch
    {
        string s => $"the string \"{s}\"",
        bool b => b ? "true" : "false",
        double d => d.ToString(CultureInfo.InvariantCulture),
        _ => value?.GetType().Name ?? "null",
    };

    private ModelCardShape Fail(DiagnosticDescriptor descriptor, Location location, params object[] arguments) =>
        Fail(Diagnostic.Create(descriptor, location, arguments));

    private ModelCardShape Fail(Diagnostic diagnostic)
    {
        Diagnostic = diagnostic;
        return this;
    }

    // Incremental pipelines compare outputs to skip regeneration: value equality over what the emitters read.
    public bool Equals(ModelCardShape? other) => other is not null && Path == other.Path && Name == other.Name
        && HiddenSize == other.HiddenSize && IntermediateSize == other.IntermediateSize && LayerCount == other.LayerCount
        && HeadCount == other.HeadCount && KvHeadCount == other.KvHeadCount && HeadDim == other.HeadDim && VocabSize == other.VocabSize
        && MaxContextLength == other.MaxContextLength && RopeTheta.Equals(other.RopeTheta) && NormEpsilon.Equals(other.NormEpsilon)
        && Nullable.Equals(ScalingFactor, other.ScalingFactor) && Nullable.Equals(LowFrequencyFactor, other.LowFrequencyFactor)
        && Nullable.Equals(HighFrequencyFactor, other.HighFrequencyFactor) && OriginalContextLength == other.OriginalContextLength
        && Equals(Diagnostic?.GetMessage(CultureInfo.InvariantCulture), other.Diagnostic?.GetMessage(CultureInfo.InvariantCulture));

    public override bool Equals(object? obj) => Equals(obj as ModelCardShape);

    public override int GetHashCode() => (Path + Name).GetHashCode() ^ HiddenSize ^ (LayerCount << 8);
}
