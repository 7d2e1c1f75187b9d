using Microsoft.CodeAnalysis;

namespace KvPacket.Generators;

/// <summary>The diagnostics a model card can raise; each names the card file and the field.</summary>
internal static class CardDiagnostics
{
    private const string Category = "KvPacket.ModelCards";

    public static readonly DiagnosticDescriptor InvalidJson = new(
        "KVP0001", "Model card is not valid JSON", "Model card '{0}' is not valid JSON: {1}", Category, DiagnosticSeverity.Error, true);

    public static readonly DiagnosticDescriptor MissingField = new(
        "KVP0002", "Model card field is missing", "Model card '{0}' has no '{1}' field", Category, DiagnosticSeverity.Error, true);

    public static readonly DiagnosticDescriptor BadValue = new(
        "KVP0003", "Model card field has an invalid value", "Model card '{0}': field '{1}' {2}", Category, DiagnosticSeverity.Error, true);

    public static readonly DiagnosticDescriptor InconsistentShape = new(
        "KVP0004", "Model card shape is inconsistent", "Model card '{0}': {1}", Category, DiagnosticSeverity.Error, true);

    public static readonly DiagnosticDescriptor DuplicateName = new(
        "KVP0005", "Two model cards share a name", "Model cards '{0}' and '{1}' are both named '{2}'", Category, DiagnosticSeverity.Error, true);

    public static readonly DiagnosticDescriptor MissingCudaTemplate = new(
        "KVP0006", "CUDA kernel template missing", "No 'kernels.cu' template among the additional files: model specs are generated without CUDA source", Category, DiagnosticSeverity.Warning, true);
}
