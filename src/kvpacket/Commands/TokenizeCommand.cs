using System.CommandLine;
using KvPacket.Core.Tokenization;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket tokenize</c>: print a text's ids and pieces.</summary>
internal static class TokenizeCommand
{
    public static Command Create()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.json, tokenizer.model (SentencePiece or tiktoken), or a model directory", Required = true };
        var bos = new Option<bool>("--bos") { Description = "Prepend BOS" };
        var text = new Argument<string>("text") { Description = "Text to encode" };
        var command = new Command("tokenize", "Encode text and print the ids and pieces") { tokenizer, bos, text };
        command.SetAction(parse =>
        {
            var model = TokenizerLoader.Load(parse.GetValue(tokenizer)!);
            int[] ids = model.Encode(parse.GetValue(text)!, new EncodeOptions(AddBos: parse.GetValue(bos)));
            Console.WriteLine(string.Join(' ', ids));
            Console.WriteLine(string.Join(' ', ids.Select(id => $"'{model.PieceOf(id)}'")));
            Console.Error.WriteLine($"{ids.Length} tokens");
            return 0;
        });
        return command;
    }
}
