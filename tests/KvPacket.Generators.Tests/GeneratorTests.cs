using System.Collections.Immutable;
using KvPacket.Compute.Specialised;
using KvPacket.Generators;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Text;
using Xunit;

namespace KvPacket.Generators.Tests;

/// <summary>Runs the model card generator in memory on sample cards and checks what it emits and reports.</summary>
public class GeneratorTests
{
    private const string Template = "// TEMPLATE BODY\nextern \"C\" __global__ void attention() {}\n";

    private const string Qwen = """
        { "name": "sample-qwen", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
          "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 151936,
          "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0 }
        """;

    private sealed class Text(string path, string text) : AdditionalText
    {
        public override string Path => path;
        public override SourceText GetText(CancellationToken cancellationToken = default) => SourceText.From(text);
    }

    private static GeneratorDriverRunResult Run(params (string Path, string Text)[] files)
    {
        var compilation = CSharpCompilation.Create("cards", [], [], new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary));
        GeneratorDriver driver = CSharpGeneratorDriver.Create([new ModelCardGenerator().AsSourceGenerator()],
            files.Select(f => (AdditionalText)new Text(f.Path, f.Text)).ToImmutableArray());
        return driver.RunGenerators(compilation).GetRunResult();
    }

    private static string Source(GeneratorDriverRunResult result, string hint) =>
        result.GeneratedTrees.Single(t => Path.GetFileName(t.FilePath) == hint).GetText().ToString();

    [Fact]
    public void A_card_becomes_a_spec_with_its_constants_kernels_rope_table_and_cuda_source()
    {
        var result = Run(("/repo/models/sample-qwen.json", Qwen), ("/repo/src/Cuda/kernels.cu", Template));
        Assert.Empty(result.Diagnostics);
        string spec = Source(result, "Sample_qwenSpec.g.cs");
        Assert.Contains("public sealed class Sample_qwenSpec : ModelSpec", spec);
        Assert.Contains("public const int HeadDimValue = 64;", spec);
        Assert.Contains("public const int GroupSizeValue = 7;", spec);
        Assert.Contains("public const int KvHeadCountValue = 2;", spec);
        Assert.Contains("private const int D = 64;", spec);
        Assert.Contains("var q3 = Vector512.Load(q + 48);", spec);          // head dim 64: four 16-lane registers
        Assert.DoesNotContain("var q4 = Vector512", spec);
        Assert.Contains("#define HEAD_DIM 64", spec);
        Assert.Contains("#define GROUP_SIZE 7", spec);
        Assert.Contains("// TEMPLATE BODY", spec);
        // The RoPE table: 32 frequencies, theta^(-2i/64), printed to round-trip.
        Assert.Contains("Frequencies = { 1.0, " + (Math.Pow(1e6, -2.0 / 64)).ToString("R", System.Globalization.CultureInfo.InvariantCulture) + ", ", spec);
        Assert.Contains("new Sample_qwenSpec(),", Source(result, "ModelSpecRegistry.g.cs"));
        // The ILGPU kernels' shape: the card's numbers as literals, the RoPE pairing left to the checkpoint.
        Assert.Contains("public readonly struct Sample_qwenIlgpuShape(int interleaved) : KvPacket.Compute.Ilgpu.IIlgpuShape", spec);
        Assert.Contains("public int Heads => 14;", spec);
        Assert.Contains("public int KvHeads => 2;", spec);
        Assert.Contains("public int HeadDim => 64;", spec);
        Assert.Contains("public int Layers => 24;", spec);
        Assert.Contains("IlgpuAttentionKernels.Load(accelerator, new Sample_qwenIlgpuShape(interleaved), Name, warps)", spec);
    }

    [Fact]
    public void The_generated_spec_compiles_against_the_runtime()
    {
        var result = Run(("/repo/models/sample-qwen.json", Qwen), ("/repo/src/Cuda/kernels.cu", Template));
        var tree = result.GeneratedTrees.Single(t => t.FilePath.EndsWith("Sample_qwenSpec.g.cs", StringComparison.Ordinal));
        var references = AppDomain.CurrentDomain.GetAssemblies()
            .Where(a => !a.IsDynamic && a.Location.Length > 0)
            .Select(a => MetadataReference.CreateFromFile(a.Location))
            .Append(MetadataReference.CreateFromFile(typeof(ModelSpec).Assembly.Location))
            .Append(MetadataReference.CreateFromFile(typeof(KvPacket.Core.Model.ModelConfig).Assembly.Location))
            .Append(MetadataReference.CreateFromFile(typeof(ILGPU.Runtime.Accelerator).Assembly.Location));
        var compilation = CSharpCompilation.Create("spec", [tree], references,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, allowUnsafe: true));
        // Internal runtime types are not visible from this test assembly: everything the spec uses is public.
        Assert.Empty(compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error));
    }

    [Fact]
    public void Generation_is_deterministic()
    {
        var first = Run(("/repo/models/a.json", Qwen), ("/repo/kernels.cu", Template));
        var second = Run(("/repo/models/a.json", Qwen), ("/repo/kernels.cu", Template));
        Assert.Equal(first.GeneratedTrees.Select(t => t.GetText().ToString()), second.GeneratedTrees.Select(t => t.GetText().ToString()));
    }

    [Theory]
    [InlineData("{ \"name\": \"x\", ", "KVP0001", "not valid JSON")]
    [InlineData("{ \"name\": \"x\", \"hidden_size\": 64 }", "KVP0002", "'intermediate_size'")]
    [InlineData("{ \"name\": \"x\", \"hidden_size\": \"wide\", \"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, \"vocab_size\": 1, \"max_position_embeddings\": 1, \"rms_norm_eps\": 1e-5 }", "KVP0003", "'hidden_size' must be a positive number")]
    [InlineData("{ \"name\": \"x\", \"hidden_size\": 64, \"intermediate_size\": 1, \"num_hidden_layers\": 2.5, \"num_attention_heads\": 1, \"vocab_size\": 1, \"max_position_embeddings\": 1, \"rms_norm_eps\": 1e-5 }", "KVP0003", "'num_hidden_layers' must be a positive integer")]
    [InlineData("{ \"name\": \"x\", \"hidden_size\": 64, \"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 6, \"num_key_value_heads\": 4, \"vocab_size\": 1, \"max_position_embeddings\": 1, \"rms_norm_eps\": 1e-5 }", "KVP0004", "not a multiple")]
    [InlineData("{ \"name\": \"x\", \"hidden_size\": 64, \"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 8, \"vocab_size\": 1, \"max_position_embeddings\": 1, \"rms_norm_eps\": 1e-5, \"rope_scaling\": { \"rope_type\": \"yarn\" } }", "KVP0003", "'rope_scaling'")]
    public void An_invalid_card_is_a_diagnostic_naming_the_file_and_field_and_the_rest_still_generate(string card, string id, string message)
    {
        var result = Run(("/repo/models/broken.json", card), ("/repo/models/sample-qwen.json", Qwen), ("/repo/kernels.cu", Template));
        var diagnostic = Assert.Single(result.Diagnostics);
        Assert.Equal(id, diagnostic.Id);
        Assert.Equal(DiagnosticSeverity.Error, diagnostic.Severity);
        Assert.Contains("broken.json", diagnostic.GetMessage(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains(message, diagnostic.GetMessage(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal("/repo/models/broken.json", diagnostic.Location.GetLineSpan().Path);
        Assert.Contains(result.GeneratedTrees, t => t.FilePath.EndsWith("Sample_qwenSpec.g.cs", StringComparison.Ordinal));
        Assert.DoesNotContain(result.GeneratedTrees, t => t.FilePath.EndsWith("XSpec.g.cs", StringComparison.Ordinal));
    }

    [Fact]
    public void Duplicate_names_and_a_missing_template_are_reported()
    {
        var result = Run(("/repo/models/a.json", Qwen), ("/repo/models/b.json", Qwen));
        Assert.Contains(result.Diagnostics, d => d.Id == "KVP0005" && d.GetMessage(System.Globalization.CultureInfo.InvariantCulture).Contains("a.json"));
        Assert.Contains(result.Diagnostics, d => d.Id == "KVP0006" && d.Severity == DiagnosticSeverity.Warning);
    }

    [Fact]
    public void Files_outside_models_are_not_cards()
    {
        var result = Run(("/repo/config/settings.json", "{ \"not\": \"a card\" }"), ("/repo/kernels.cu", Template));
        Assert.Empty(result.Diagnostics);
        Assert.Single(result.GeneratedTrees); // the empty registry
    }
}
