using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.IO;
using System.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace KvPacket.Generators;

/// <summary>
/// Turns the model cards (<c>models/*.json</c>, passed as AdditionalFiles) into one <c>ModelSpec</c> per card with
/// compile-time constants, CPU attention kernels for the card's head dim, its RoPE frequency table and its CUDA
/// source (the card's constants in front of the <c>kernels.cu</c> template). A card that cannot be read raises a
/// KVP diagnostic naming the file and the field, and gets no spec; the others are still generated.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed class ModelCardGenerator : IIncrementalGenerator
{
    /// <inheritdoc />
    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        var cards = context.AdditionalTextsProvider
            .Where(file => file.Path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)
                           && Path.GetFileName(Path.GetDirectoryName(file.Path)) == "models")
            .Select((file, cancel) => ModelCardShape.Read(file.Path, file.GetText(cancel)?.ToString() ?? ""));
        var template = context.AdditionalTextsProvider
            .Where(file => Path.GetFileName(file.Path) == "kernels.cu")
            .Select((file, cancel) => file.GetText(cancel)?.ToString() ?? "")
            .Collect();
        var all = cards.Collect().Combine(template);
        context.RegisterSourceOutput(all, (output, input) => Generate(output, input.Left, input.Right));
    }

    private static void Generate(SourceProductionContext output, ImmutableArray<ModelCardShape> cards, ImmutableArray<string> templates)
    {
        string? template = templates.FirstOrDefault();
        if (template is null && cards.Length > 0) output.ReportDiagnostic(Diagnostic.Create(CardDiagnostics.MissingCudaTemplate, Location.None));
        var valid = new List<ModelCardShape>();
        var names = new Dictionary<string, ModelCardShape>(StringComparer.OrdinalIgnoreCase);
        foreach (var card in cards.OrderBy(c => c.Path, StringComparer.Ordinal))
        {
            if (card.Diagnostic is not null) { output.ReportDiagnostic(card.Diagnostic); continue; }
            if (names.TryGetValue(card.Identifier, out var first))
            {
                output.ReportDiagnostic(Diagnostic.Create(CardDiagnostics.DuplicateName,
                    Location.Create(card.Path, new TextSpan(0, 0), new LinePositionSpan(default, default)),
                    Path.GetFileName(first.Path), Path.GetFileName(card.Path), card.Name));
                continue;
            }
            names[card.Identifier] = card;
            valid.Add(card);
            output.AddSource($"{card.Identifier}Spec.g.cs", SpecEmitter.Emit(card, template));
        }
        output.AddSource("ModelSpecRegistry.g.cs", SpecEmitter.EmitRegistry(valid));
    }
}
