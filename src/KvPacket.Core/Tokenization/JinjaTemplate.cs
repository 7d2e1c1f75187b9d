using System.Globalization;
using System.Text;
using System.Text.Json;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// The subset of Jinja that Hugging Face chat templates use, rendered the way <c>apply_chat_template</c> does
/// (<c>trim_blocks</c> and <c>lstrip_blocks</c> on): text, <c>{{ expr }}</c>, <c>{% if / elif / else %}</c>,
/// <c>{% for x in xs %}</c> with <c>loop</c>, <c>{% set %}</c> (also <c>ns.attr</c> on a <c>namespace()</c>), comments and
/// <c>-</c> whitespace control. Expressions: literals, lists, dicts, attribute and item access, slices, calls,
/// arithmetic, <c>~</c>, comparisons, <c>in</c>, <c>and / or / not</c>, <c>x if c else y</c>, tests (<c>is defined</c>, …)
/// and the common filters and string methods. Anything else is a <see cref="FormatException"/> naming it — a template
/// is rendered as written or not at all.
/// </summary>
public sealed class JinjaTemplate
{
    private readonly List<Node> _body;

    private JinjaTemplate(List<Node> body) => _body = body;

    /// <summary>Parses <paramref name="source"/>.</summary>
    public static JinjaTemplate Parse(string source)
    {
        var parser = new StatementParser(Lex(source));
        var body = parser.Block(out string? end);
        if (end is not null) throw new FormatException($"chat template: '{{% {end} %}}' without its opening tag");
        return new JinjaTemplate(body);
    }

    /// <summary>Renders the template with <paramref name="variables"/> (strings, numbers, booleans, null, lists and string-keyed dictionaries).</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables)
    {
        var scope = new Dictionary<string, object?>(variables)
        {
            ["raise_exception"] = new Callable((args, _) => throw new InvalidOperationException($"chat template: {Str(args.FirstOrDefault())}")),
            ["range"] = new Callable((args, _) => Enumerable.Range(0, (int)Num(args[0])).Select(i => (object?)(long)i).ToList()),
            ["namespace"] = new Callable((_, kwargs) => new Namespace(kwargs)),
        };
        var output = new StringBuilder();
        Execute(_body, scope, output);
        return output.ToString();
    }

    // ---- lexing: text and tags, with Jinja's whitespace control and HF's trim_blocks / lstrip_blocks ----

    private enum PieceKind { Text, Output, Statement }

    private readonly record struct Piece(PieceKind Kind, string Content);

    private static List<Piece> Lex(string source)
    {
        var pieces = new List<Piece>();
        int i = 0;
        bool trimNextLeading = false, trimNextNewline = false;
        while (i < source.Length)
        {
            int open = source.IndexOf('{', i);
            while (open >= 0 && open + 1 < source.Length && source[open + 1] is not ('{' or '%' or '#')) open = source.IndexOf('{', open + 1);
            if (open < 0 || open + 1 >= source.Length) open = source.Length;
            string text = source[i..open];
            if (trimNextLeading) text = text.TrimStart();
            else if (trimNextNewline && text.StartsWith('\n')) text = text[1..];
            trimNextLeading = trimNextNewline = false;
            if (open == source.Length) { pieces.Add(new Piece(PieceKind.Text, text)); break; }
            char kind = source[open + 1];
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = source.IndexOf(close, open + 2, StringComparison.Ordinal);
            if (end < 0) throw new FormatException($"chat template: a tag opened at offset {open} is never closed");
            string inner = source[(open + 2)..end];
            bool stripBefore = inner.StartsWith('-'), stripAfter = inner.EndsWith('-');
            if (stripBefore) text = text.TrimEnd();
            else if (kind != '{')
            {
                // lstrip_blocks: spaces and tabs between the start of a source line and a block tag go.
                int k = open;
                while (k > i && source[k - 1] is ' ' or '\t') k--;
                if (k == 0 || source[k - 1] == '\n') text = text.TrimEnd(' ', '\t');
            }
            pieces.Add(new Piece(PieceKind.Text, text));
            string content = inner[(stripBefore ? 1 : 0)..^(stripAfter && inner.Length > 0 ? 1 : 0)].Trim();
            if (kind == '{') pieces.Add(new Piece(PieceKind.Output, content));
            else if (kind == '%') pieces.Add(new Piece(PieceKind.Statement, content));
            trimNextLeading = stripAfter;
            trimNextNewline = kind != '{'; // trim_blocks: the newline right after a block tag goes
            i = end + 2;
        }
        return pieces;
    }

    // ---- statements ----

    private abstract record Node;
    private sealed record TextNode(string Text) : Node;
    private sealed record OutputNode(Expr Value) : Node;
    private sealed record IfNode(List<(Expr Condition, List<Node> Body)> Branches, List<Node>? Else) : Node;
    private sealed record ForNode(string[] Names, Expr Items, Expr? Filter, List<Node> Body, List<Node>? Else) : Node;
    private sealed record SetNode(string Name, string? Attribute, Expr Value) : Node;

    private sealed class StatementParser(List<Piece> pieces)
    {
        private int _at;

        /// <summary>Nodes up to a closing or continuing tag (endif, elif, else, endfor), whose text is returned in <paramref name="end"/>.</summary>
        public List<Node> Block(out string? end)
        {
            var nodes = new List<Node>();
            while (_at < pieces.Count)
            {
                var piece = pieces[_at++];
                switch (piece.Kind)
                {
                    case PieceKind.Text when piece.Content.Length > 0: nodes.Add(new TextNode(piece.Content)); break;
                    case PieceKind.Text: break;
                    case PieceKind.Output: nodes.Add(new OutputNode(ExpressionParser.ParseAll(piece.Content))); break;
                    default:
                        string keyword = piece.Content.Split([' ', '\t', '\n'], 2)[0];
                        string rest = piece.Content[keyword.Length..].Trim();
                        switch (keyword)
                        {
                            case "if": nodes.Add(If(rest)); break;
                            case "for": nodes.Add(For(rest)); break;
                            case "set": nodes.Add(Set(rest)); break;
                            case "endif" or "elif" or "else" or "endfor":
                                end = piece.Content;
                                return nodes;
                            default: throw new FormatException($"chat template: the tag '{{% {keyword} %}}' is not supported");
                        }
                        break;
                }
            }
            end = null;
            return nodes;
        }

        private IfNode If(string condition)
        {
            var branches = new List<(Expr, List<Node>)>();
            var expr = ExpressionParser.ParseAll(condition);
            while (true)
            {
                branches.Add((expr, Block(out string? end)));
                if (end == "endif") return new IfNode(branches, null);
                if (end == "else")
                {
                    var otherwise = Block(out end);
                    return end == "endif" ? new IfNode(branches, otherwise) : throw new FormatException("chat template: '{% else %}' must be followed by '{% endif %}'");
                }
                if (end is null || !end.StartsWith("elif ", StringComparison.Ordinal))
                    throw new FormatException(end is null ? "chat template: '{% if %}' without '{% endif %}'" : $"chat template: unexpected '{{% {end} %}}' in an if");
                expr = ExpressionParser.ParseAll(end[5..]);
            }
        }

        private ForNode For(string header)
        {
            int @in = header.IndexOf(" in ", StringComparison.Ordinal);
            if (@in < 0) throw new FormatException($"chat template: '{{% for {header} %}}' has no 'in'");
            string[] names = [.. header[..@in].Split(',').Select(n => n.Trim())];
            string source = header[(@in + 4)..];
            Expr? filter = null;
            int ifAt = source.IndexOf(" if ", StringComparison.Ordinal);
            if (ifAt >= 0) { filter = ExpressionParser.ParseAll(source[(ifAt + 4)..]); source = source[..ifAt]; }
            var body = Block(out string? end);
            List<Node>? otherwise = null;
            if (end == "else") otherwise = Block(out end);
            if (end != "endfor") throw new FormatException("chat template: '{% for %}' without '{% endfor %}'");
            return new ForNode(names, ExpressionParser.ParseAll(source), filter, body, otherwise);
        }

        private static SetNode Set(string assignment)
        {
            int equals = assignment.IndexOf('=');
            if (equals < 0) throw new FormatException($"chat template: '{{% set {assignment} %}}' (block sets are not supported)");
            string target = assignment[..equals].Trim();
            int dot = target.IndexOf('.');
            return new SetNode(dot < 0 ? target : target[..dot], dot < 0 ? null : target[(dot + 1)..], ExpressionParser.ParseAll(assignment[(equals + 1)..]));
        }
    }

    private static void Execute(List<Node> nodes, Dictionary<string, object?> scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            switch (node)
            {
                case TextNode text: output.Append(text.Text); break;
                case OutputNode value: output.Append(Str(value.Value.Evaluate(scope))); break;
                case IfNode branch:
                    var chosen = branch.Branches.FirstOrDefault(b => Truthy(b.Condition.Evaluate(scope))).Body ?? branch.Else;
                    if (chosen is not null) Execute(chosen, scope, output);
                    break;
                case SetNode set when set.Attribute is null: scope[set.Name] = set.Value.Evaluate(scope); break;
                case SetNode set:
                    if (scope.GetValueOrDefault(set.Name) is not Namespace ns) throw new InvalidOperationException($"chat template: '{set.Name}' is not a namespace");
                    ns.Values[set.Attribute!] = set.Value.Evaluate(scope);
                    break;
                case ForNode loop: For(loop, scope, output); break;
            }
        }
    }

    private static void For(ForNode loop, Dictionary<string, object?> scope, StringBuilder output)
    {
        var items = Items(loop.Items.Evaluate(scope)).ToList();
        // The loop's variables live in a scope of their own; sets inside it do not leak out (as in Jinja).
        var inner = new Dictionary<string, object?>(scope);
        if (loop.Filter is not null)
            items = [.. items.Where(item => { Bind(loop.Names, item, inner); return Truthy(loop.Filter.Evaluate(inner)); })];
        for (int i = 0; i < items.Count; i++)
        {
            Bind(loop.Names, items[i], inner);
            inner["loop"] = new Dictionary<string, object?>
            {
                ["index0"] = (long)i, ["index"] = (long)(i + 1), ["first"] = i == 0, ["last"] = i == items.Count - 1, ["length"] = (long)items.Count,
                ["revindex"] = (long)(items.Count - i), ["revindex0"] = (long)(items.Count - i - 1),
                ["previtem"] = i > 0 ? items[i - 1] : Undefined.Value, ["nextitem"] = i + 1 < items.Count ? items[i + 1] : Undefined.Value,
            };
            Execute(loop.Body, inner, output);
        }
        if (items.Count == 0 && loop.Else is not null) Execute(loop.Else, inner, output);
    }

    private static void Bind(string[] names, object? item, Dictionary<string, object?> scope)
    {
        if (names.Length == 1) { scope[names[0]] = item; return; }
        var parts = Items(item).ToList();
        if (parts.Count != names.Length) throw new InvalidOperationException($"chat template: cannot unpack {parts.Count} values into {names.Length} names");
        for (int i = 0; i < names.Length; i++) scope[names[i]] = parts[i];
    }

    // ---- expressions ----

    private abstract record Expr
    {
        public abstract object? Evaluate(Dictionary<string, object?> scope);
    }

    private sealed record Literal(object? Value) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Value;
    }

    private sealed record Name(string Id) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => scope.TryGetValue(Id, out var v) ? v : Undefined.Value;
    }

    private sealed record ListExpr(List<Expr> Items) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Items.Select(i => i.Evaluate(scope)).ToList();
    }

    private sealed record DictExpr(List<(Expr Key, Expr Value)> Items) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Items.ToDictionary(i => Str(i.Key.Evaluate(scope)), i => i.Value.Evaluate(scope));
    }

    private sealed record Attribute(Expr Target, string Id) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Member(Target.Evaluate(scope), Id);
    }

    private sealed record Index(Expr Target, Expr Key) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope)
        {
            var target = Target.Evaluate(scope);
            var key = Key.Evaluate(scope);
            return key is string s ? Member(target, s) : target switch
            {
                List<object?> list => At(list.Count, Num(key)) is int i ? list[i] : Undefined.Value,
                string text => At(text.Length, Num(key)) is int i ? text[i].ToString() : Undefined.Value,
                _ => Undefined.Value,
            };
        }

        private static int? At(int count, double key) => (int)key is var i && (i < 0 ? i + count : i) is var j && j >= 0 && j < count ? j : null;
    }

    private sealed record Slice(Expr Target, Expr? Start, Expr? Stop) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope)
        {
            var target = Target.Evaluate(scope);
            int count = target switch { List<object?> l => l.Count, string s => s.Length, _ => throw new InvalidOperationException("chat template: only lists and strings can be sliced") };
            int Bound(Expr? e, int fallback) => e is null ? fallback : Math.Clamp((int)Num(e.Evaluate(scope)) is var v && v < 0 ? v + count : v, 0, count);
            int start = Bound(Start, 0), stop = Math.Max(start, Bound(Stop, count));
            return target is string text ? text[start..stop] : ((List<object?>)target).GetRange(start, stop - start);
        }
    }

    private sealed record Call(Expr Target, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope)
        {
            var args = Args.Select(a => a.Evaluate(scope)).ToList();
            var kwargs = Kwargs.ToDictionary(k => k.Name, k => k.Value.Evaluate(scope));
            if (Target is Attribute method) return Method(method.Target.Evaluate(scope), method.Id, args);
            return Target.Evaluate(scope) is Callable f ? f.Invoke(args, kwargs) : throw new InvalidOperationException($"chat template: {Target} is not callable");
        }
    }

    private sealed record Filter(Expr Target, string Id, List<Expr> Args) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => ApplyFilter(Target.Evaluate(scope), Id, [.. Args.Select(a => a.Evaluate(scope))]);
    }

    private sealed record Test(Expr Target, string Id, bool Negated, List<Expr> Args) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Negated ^ ApplyTest(Target.Evaluate(scope), Id, [.. Args.Select(a => a.Evaluate(scope))]);
    }

    private sealed record Unary(string Op, Expr Operand) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Op == "not" ? !Truthy(Operand.Evaluate(scope)) : Negate(Operand.Evaluate(scope));
    }

    private sealed record Binary(string Op, Expr Left, Expr Right) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope)
        {
            var left = Left.Evaluate(scope);
            switch (Op)
            {
                case "and": return Truthy(left) ? Right.Evaluate(scope) : left;
                case "or": return Truthy(left) ? left : Right.Evaluate(scope);
            }
            var right = Right.Evaluate(scope);
            return Op switch
            {
                "==" => Same(left, right), "!=" => !Same(left, right),
                "<" => Compare(left, right) < 0, ">" => Compare(left, right) > 0, "<=" => Compare(left, right) <= 0, ">=" => Compare(left, right) >= 0,
                "in" => Contains(right, left), "not in" => !Contains(right, left),
                "~" => Str(left) + Str(right),
                "+" when left is string || right is string => left is string a && right is string b ? a + b : throw new InvalidOperationException("chat template: '+' of a string and a non-string"),
                "+" when left is List<object?> a && right is List<object?> b => a.Concat(b).ToList(),
                _ => Arithmetic(Op, left, right),
            };
        }
    }

    private sealed record Conditional(Expr Condition, Expr Then, Expr? Else) : Expr
    {
        public override object? Evaluate(Dictionary<string, object?> scope) => Truthy(Condition.Evaluate(scope)) ? Then.Evaluate(scope) : Else?.Evaluate(scope) ?? Undefined.Value;
    }

    /// <summary>Recursive descent over one tag's expression, lowest precedence first.</summary>
    private sealed class ExpressionParser
    {
        private readonly List<string> _tokens;
        private int _at;

        private ExpressionParser(string text) => _tokens = Tokens(text);

        public static Expr ParseAll(string text)
        {
            var parser = new ExpressionParser(text);
            var expr = parser.Ternary();
            if (parser._at != parser._tokens.Count) throw new FormatException($"chat template: unexpected '{parser._tokens[parser._at]}' in '{text.Trim()}'");
            return expr;
        }

        private static List<string> Tokens(string text)
        {
            var tokens = new List<string>();
            for (int i = 0; i < text.Length;)
            {
                char c = text[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (c is '\'' or '"')
                {
                    var literal = new StringBuilder("\"");
                    int j = i + 1;
                    for (; j < text.Length && text[j] != c; j++)
                    {
                        if (text[j] != '\\' || j + 1 >= text.Length) { literal.Append(text[j]); continue; }
                        literal.Append(text[++j] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', var other => other });
                    }
                    if (j >= text.Length) throw new FormatException("chat template: an unterminated string literal");
                    tokens.Add(literal.ToString());
                    i = j + 1;
                    continue;
                }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < text.Length && (char.IsLetterOrDigit(text[j]) || text[j] == '_')) j++;
                    tokens.Add(text[i..j]);
                    i = j;
                    continue;
                }
                if (char.IsAsciiDigit(c))
                {
                    int j = i;
                    while (j < text.Length && (char.IsAsciiDigit(text[j]) || (text[j] == '.' && j + 1 < text.Length && char.IsAsciiDigit(text[j + 1])))) j++;
                    tokens.Add(text[i..j]);
                    i = j;
                    continue;
                }
                string two = i + 1 < text.Length ? text.Substring(i, 2) : "";
                if (two is "==" or "!=" or "<=" or ">=" or "//") { tokens.Add(two); i += 2; continue; }
                if ("()[]{}.,:|~+-*/%<>=".Contains(c)) { tokens.Add(c.ToString()); i++; continue; }
                throw new FormatException($"chat template: unexpected character '{c}' in '{text.Trim()}'");
            }
            return tokens;
        }

        private string? Peek => _at < _tokens.Count ? _tokens[_at] : null;

        private bool Accept(string token)
        {
            if (Peek != token) return false;
            _at++;
            return true;
        }

        private string Next() => _at < _tokens.Count ? _tokens[_at++] : throw new FormatException("chat template: an expression ends too early");

        private void Expect(string token)
        {
            if (!Accept(token)) throw new FormatException($"chat template: expected '{token}', found '{Peek ?? "the end"}'");
        }

        private Expr Ternary()
        {
            var value = Or();
            if (!Accept("if")) return value;
            var condition = Or();
            return new Conditional(condition, value, Accept("else") ? Ternary() : null);
        }

        private Expr Or() => LeftAssociative(And, "or");

        private Expr And() => LeftAssociative(Not, "and");

        private Expr Not() => Accept("not") ? new Unary("not", Not()) : Comparison();

        private Expr Comparison()
        {
            var left = Concat();
            while (true)
            {
                if (Peek is "==" or "!=" or "<" or ">" or "<=" or ">=" or "in") left = new Binary(Next(), left, Concat());
                else if (Peek == "not" && _at + 1 < _tokens.Count && _tokens[_at + 1] == "in") { _at += 2; left = new Binary("not in", left, Concat()); }
                else if (Accept("is"))
                {
                    bool negated = Accept("not");
                    string test = Next();
                    var args = new List<Expr>();
                    if (Accept("(")) args = Arguments(out _);
                    left = new Test(left, test, negated, args);
                }
                else return left;
            }
        }

        private Expr Concat() => LeftAssociative(Additive, "~");

        private Expr Additive() => LeftAssociative(Multiplicative, "+", "-");

        private Expr Multiplicative() => LeftAssociative(UnaryMinus, "*", "/", "//", "%");

        /// <summary>operand (op operand)*, grouped from the left: one precedence level of binary operators.</summary>
        private Expr LeftAssociative(Func<Expr> operand, params string[] operators)
        {
            var left = operand();
            while (Peek is { } token && Array.IndexOf(operators, token) >= 0) left = new Binary(Next(), left, operand());
            return left;
        }

        private Expr UnaryMinus() => Accept("-") ? new Unary("-", UnaryMinus()) : Filtered();

        private Expr Filtered()
        {
            var value = Postfix();
            while (Accept("|"))
            {
                string name = Next();
                value = new Filter(value, name, Accept("(") ? Arguments(out _) : []);
            }
            return value;
        }

        private Expr Postfix()
        {
            var value = Primary();
            while (true)
            {
                if (Accept(".")) value = new Attribute(value, Next());
                else if (Accept("["))
                {
                    Expr? start = Peek == ":" ? null : Ternary();
                    if (Accept(":"))
                    {
                        Expr? stop = Peek == "]" ? null : Ternary();
                        value = new Slice(value, start, stop);
                    }
                    else value = new Index(value, start!);
                    Expect("]");
                }
                else if (Accept("("))
                {
                    var args = Arguments(out var kwargs);
                    value = new Call(value, args, kwargs);
                }
                else return value;
            }
        }

        /// <summary>Call arguments after '(' up to ')': positional, then name=value.</summary>
        private List<Expr> Arguments(out List<(string, Expr)> kwargs)
        {
            var args = new List<Expr>();
            kwargs = [];
            while (!Accept(")"))
            {
                if (_at + 1 < _tokens.Count && _tokens[_at + 1] == "=" && char.IsLetter(_tokens[_at][0]))
                {
                    string name = Next();
                    _at++;
                    kwargs.Add((name, Ternary()));
                }
                else args.Add(Ternary());
                if (!Accept(",")) { Expect(")"); break; }
            }
            return args;
        }

        private Expr Primary()
        {
            string token = Next();
            if (token[0] == '"') return new Literal(token[1..]);
            if (char.IsAsciiDigit(token[0]))
                return new Literal(token.Contains('.') ? double.Parse(token, CultureInfo.InvariantCulture) : long.Parse(token, CultureInfo.InvariantCulture));
            switch (token)
            {
                case "true" or "True": return new Literal(true);
                case "false" or "False": return new Literal(false);
                case "none" or "None": return new Literal(null);
                case "(":
                    var inner = Ternary();
                    Expect(")");
                    return inner;
                case "[":
                    var items = new List<Expr>();
                    while (!Accept("]"))
                    {
                        items.Add(Ternary());
                        if (!Accept(",")) { Expect("]"); break; }
                    }
                    return new ListExpr(items);
                case "{":
                    var pairs = new List<(Expr, Expr)>();
                    while (!Accept("}"))
                    {
                        var key = Ternary();
                        Expect(":");
                        pairs.Add((key, Ternary()));
                        if (!Accept(",")) { Expect("}"); break; }
                    }
                    return new DictExpr(pairs);
            }
            if (char.IsLetter(token[0]) || token[0] == '_') return new Name(token);
            throw new FormatException($"chat template: unexpected '{token}'");
        }
    }

    // ---- values ----

    private sealed class Undefined
    {
        public static readonly Undefined Value = new();
    }

    private sealed class Namespace(Dictionary<string, object?> values)
    {
        public Dictionary<string, object?> Values { get; } = values;
    }

    private sealed class Callable(Func<List<object?>, Dictionary<string, object?>, object?> invoke)
    {
        public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
    }

    private static object? Member(object? target, string name) => target switch
    {
        IReadOnlyDictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : Undefined.Value,
        Namespace ns => ns.Values.TryGetValue(name, out var v) ? v : Undefined.Value,
        _ => Undefined.Value,
    };

    private static object? Method(object? target, string name, List<object?> args) => (target, name) switch
    {
        (string s, "strip") => args.Count > 0 ? s.Trim(Str(args[0]).ToCharArray()) : s.Trim(),
        (string s, "lstrip") => args.Count > 0 ? s.TrimStart(Str(args[0]).ToCharArray()) : s.TrimStart(),
        (string s, "rstrip") => args.Count > 0 ? s.TrimEnd(Str(args[0]).ToCharArray()) : s.TrimEnd(),
        (string s, "startswith") => s.StartsWith(Str(args[0]), StringComparison.Ordinal),
        (string s, "endswith") => s.EndsWith(Str(args[0]), StringComparison.Ordinal),
        (string s, "upper") => s.ToUpperInvariant(),
        (string s, "lower") => s.ToLowerInvariant(),
        (string s, "replace") => s.Replace(Str(args[0]), Str(args[1]), StringComparison.Ordinal),
        (string s, "split") => (args.Count > 0 ? s.Split(Str(args[0])) : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).Select(p => (object?)p).ToList(),
        (Dictionary<string, object?> d, "get") => d.TryGetValue(Str(args[0]), out var v) ? v : args.Count > 1 ? args[1] : null,
        (Dictionary<string, object?> d, "items") => d.Select(p => (object?)new List<object?> { p.Key, p.Value }).ToList(),
        (Dictionary<string, object?> d, "keys") => d.Keys.Select(k => (object?)k).ToList(),
        (Dictionary<string, object?> d, "values") => d.Values.ToList(),
        _ => throw new InvalidOperationException($"chat template: no method '{name}' on {TypeName(target)}"),
    };

    private static object? ApplyFilter(object? value, string name, List<object?> args) => name switch
    {
        "trim" => Str(value).Trim(),
        "length" or "count" => (long)(value switch { string s => s.Length, List<object?> l => l.Count, Dictionary<string, object?> d => d.Count, _ => 0 }),
        "upper" => Str(value).ToUpperInvariant(),
        "lower" => Str(value).ToLowerInvariant(),
        "capitalize" => Str(value) is { Length: > 0 } s ? char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant() : "",
        "string" => Str(value),
        "int" => (long)Num(value),
        "first" => Items(value).FirstOrDefault(),
        "last" => Items(value).LastOrDefault(),
        "list" => Items(value).ToList(),
        "join" => string.Join(args.Count > 0 ? Str(args[0]) : "", Items(value).Select(Str)),
        "default" or "d" => value is Undefined || (args.Count > 1 && Truthy(args[1]) && !Truthy(value)) ? args.FirstOrDefault() ?? "" : value,
        "tojson" => JsonSerializer.Serialize(Plain(value)),
        "items" => Method(value, "items", []),
        _ => throw new InvalidOperationException($"chat template: the filter '{name}' is not supported"),
    };

    private static bool ApplyTest(object? value, string name, List<object?> args) => name switch
    {
        "defined" => value is not Undefined,
        "undefined" => value is Undefined,
        "none" => value is null,
        "string" => value is string,
        "number" => value is long or double,
        "boolean" => value is bool,
        "mapping" => value is IReadOnlyDictionary<string, object?>,
        "iterable" or "sequence" => value is string or List<object?> or Dictionary<string, object?>,
        "true" => value is true,
        "false" => value is false,
        "even" => (long)Num(value) % 2 == 0,
        "odd" => (long)Num(value) % 2 != 0,
        "eq" or "equalto" => Same(value, args[0]),
        _ => throw new InvalidOperationException($"chat template: the test '{name}' is not supported"),
    };

    private static IEnumerable<object?> Items(object? value) => value switch
    {
        List<object?> list => list,
        string s => s.Select(c => (object?)c.ToString()),
        Dictionary<string, object?> d => d.Keys,
        Undefined or null => [],
        _ => throw new InvalidOperationException($"chat template: cannot iterate over {TypeName(value)}"),
    };

    private static object? Plain(object? value) => value switch
    {
        Undefined => null,
        List<object?> list => list.Select(Plain).ToList(),
        Dictionary<string, object?> d => d.ToDictionary(p => p.Key, p => Plain(p.Value)),
        Namespace ns => ns.Values.ToDictionary(p => p.Key, p => Plain(p.Value)),
        _ => value,
    };

    private static bool Truthy(object? value) => value switch
    {
        null or Undefined => false,
        bool b => b,
        string s => s.Length > 0,
        long n => n != 0,
        double d => d != 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    private static string Str(object? value) => value switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        bool b => b ? "True" : "False",
        long n => n.ToString(CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => JsonSerializer.Serialize(Plain(value)),
    };

    private static double Num(object? value) => value switch
    {
        long n => n,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidOperationException($"chat template: {TypeName(value)} is not a number"),
    };

    private static object Negate(object? value) => value is long n ? -n : -Num(value);

    private static object Arithmetic(string op, object? left, object? right)
    {
        if (left is long a && right is long b)
            return op switch
            {
                "+" => a + b, "-" => a - b, "*" => a * b, "//" => (long)Math.Floor((double)a / b), "%" => ((a % b) + b) % b, "/" => (double)a / b,
                _ => throw new InvalidOperationException($"chat template: operator '{op}'"),
            };
        double x = Num(left), y = Num(right);
        return op switch
        {
            "+" => x + y, "-" => x - y, "*" => x * y, "/" => x / y, "//" => Math.Floor(x / y), "%" => x - y * Math.Floor(x / y),
            _ => throw new InvalidOperationException($"chat template: operator '{op}'"),
        };
    }

    private static bool Same(object? left, object? right) => (left, right) switch
    {
        (null or Undefined, null or Undefined) => left?.GetType() == right?.GetType(),
        (long or double, long or double) => Num(left) == Num(right),
        _ => Equals(left, right),
    };

    private static int Compare(object? left, object? right) =>
        left is string a && right is string b ? string.CompareOrdinal(a, b) : Num(left).CompareTo(Num(right));

    private static bool Contains(object? container, object? item) => container switch
    {
        string s => s.Contains(Str(item), StringComparison.Ordinal),
        List<object?> l => l.Any(x => Same(x, item)),
        Dictionary<string, object?> d => item is string k && d.ContainsKey(k),
        Namespace ns => item is string k && ns.Values.ContainsKey(k),
        _ => false,
    };

    private static string TypeName(object? value) => value switch
    {
        null => "none", Undefined => "an undefined value", string => "a string", long or double => "a number", bool => "a boolean",
        List<object?> => "a list", _ => "a mapping",
    };
}
