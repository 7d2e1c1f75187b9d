using System.CommandLine;

namespace KvPacket.Cli.Training;

/// <summary>The document source and request-shape options <c>train</c> and <c>eval</c> share, so both build requests alike.</summary>
internal sealed class RequestShapeOptions
{
    public Option<string> Docs { get; } = new("--docs")
    {
        Description = "Documents: 'generated' (the model's own stories), a .txt file or directory, or a .tokens file (ids per line)", DefaultValueFactory = _ => "generated",
    };
    public Option<int> Documents { get; } = new("--documents") { Description = "Documents per request", DefaultValueFactory = _ => 3 };
    public Option<int> DocumentTokens { get; } = new("--document-tokens") { Description = "Tokens per document", DefaultValueFactory = _ => 64 };
    public Option<int> QueryTokens { get; } = new("--query-tokens") { Description = "Query tokens (the start of a further document)", DefaultValueFactory = _ => 8 };

    /// <summary>Adds the options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        command.Options.Add(Docs);
        command.Options.Add(Documents);
        command.Options.Add(DocumentTokens);
        command.Options.Add(QueryTokens);
    }

    /// <summary>The parsed shape, with <paramref name="greedyTokens"/> continuation tokens scored after the query.</summary>
    public RequestShape Shape(ParseResult parse, int greedyTokens) =>
        new(parse.GetValue(Documents), parse.GetValue(DocumentTokens), parse.GetValue(QueryTokens), greedyTokens);
}
