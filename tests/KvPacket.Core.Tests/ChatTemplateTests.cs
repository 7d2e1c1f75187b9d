using KvPacket.Core.Tokenization;
using Xunit;

namespace KvPacket.Tests;

/// <summary>The Jinja subset on chat templates written in the styles checkpoints ship (Llama 3 headers, ChatML), rendered as apply_chat_template would.</summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] Conversation = [new("system", "Be brief."), new("user", "  Hi!  "), new("assistant", "Hello."), new("user", "Where is Vosk?")];

    /// <summary>Llama 3's layout: role headers, trimmed contents, an end-of-turn token, BOS first.</summary>
    private const string Llama3Style = """
        {%- set loop_messages = messages -%}
        {{- bos_token -}}
        {%- for message in loop_messages %}
            {%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}
            {{- content }}
        {%- endfor %}
        {%- if add_generation_prompt -%}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {%- endif -%}
        """;

    /// <summary>ChatML with a default system message when the conversation has none, written with trim_blocks in mind (no '-' markers).</summary>
    private const string ChatMlStyle = """
        {% for message in messages %}
        {% if loop.first and message.role != 'system' %}
        <|im_start|>system
        You are a helpful assistant.<|im_end|>
        {% endif %}
        <|im_start|>{{ message.role }}
        {{ message.content }}<|im_end|>
        {% endfor %}
        {% if add_generation_prompt %}
        <|im_start|>assistant
        {% endif %}
        """;

    [Fact]
    public void A_llama3_style_template_renders_headers_trimmed_contents_and_the_generation_prompt()
    {
        string text = new ChatTemplate(Llama3Style, "<|begin_of_text|>").Render(Conversation);
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nWhere is Vosk?<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n", text);
    }

    [Fact]
    public void A_chatml_template_relies_on_trim_blocks_and_lstrip_blocks_and_adds_a_default_system_turn()
    {
        var template = new ChatTemplate(ChatMlStyle);
        Assert.Equal(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhere is Vosk?<|im_end|>\n<|im_start|>assistant\n",
            template.Render([new("user", "Where is Vosk?")]));
        Assert.StartsWith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi!  <|im_end|>\n", template.Render(Conversation, addGenerationPrompt: false));
        Assert.EndsWith("Where is Vosk?<|im_end|>\n", template.Render(Conversation, addGenerationPrompt: false));
    }

    [Theory]
    [InlineData("{{ 'a' ~ 1 ~ none }}", "a1None")]
    [InlineData("{{ 7 // 2 }}{{ 7 % 3 }}{{ -2 + 5 * 2 }}{{ 1 / 4 }}", "3180.25")]
    [InlineData("{{ [1, 2, 3][1:] | length }}{{ 'abc'[-1] }}{{ [3, 4] | last }}", "2c4")]
    [InlineData("{{ x is defined }}{{ x is not defined }}{{ none is none }}{{ 'a' in 'cat' }}{{ 2 not in [1, 3] }}", "FalseTrueTrueTrueTrue")]
    [InlineData("{{ 'yes' if 3 > 2 and not false else 'no' }}{{ 'x' if 0 }}", "yes")]
    [InlineData("{% set ns = namespace(found=false) %}{% for i in range(3) %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", "True")]
    [InlineData("{% for i in [1, 2, 3] if i != 2 %}{{ loop.index }}:{{ i }}{{ ',' if not loop.last }}{% endfor %}", "1:1,2:3")]
    [InlineData("{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{{ {'b': [1]} | tojson }}", "a=1{\"b\":[1]}")]
    [InlineData("{% if false %}a{% elif 1 %}b{% else %}c{% endif %}|{{ '  s '.strip() }}|{{ 'A-b'.lower().split('-') | join('+') }}", "b|s|a+b")]
    [InlineData("a  {%- if true -%}  b  {%- endif -%}  c{# a comment #}", "abc")]
    [InlineData("{% for x in [] %}x{% else %}empty{% endfor %}{% set y = 1 %}{% for i in [1] %}{% set y = 2 %}{% endfor %}{{ y }}", "empty1")]
    public void Expressions_statements_and_whitespace_control_render_as_jinja_does(string source, string expected) =>
        Assert.Equal(expected, JinjaTemplate.Parse(source).Render(new Dictionary<string, object?>()));

    [Fact]
    public void A_template_that_refuses_a_conversation_or_uses_what_is_not_supported_fails_clearly()
    {
        var strict = new ChatTemplate("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ m.content }}{% endfor %}");
        Assert.Equal("Hi", strict.Render([new("user", "Hi")]));
        Assert.Contains("no system role", Assert.Throws<InvalidOperationException>(() => strict.Render(Conversation)).Message);
        Assert.Contains("'{% macro %}' is not supported", Assert.Throws<FormatException>(() => JinjaTemplate.Parse("{% macro f() %}{% endmacro %}")).Message);
        Assert.Contains("without '{% endif %}'", Assert.Throws<FormatException>(() => JinjaTemplate.Parse("{% if true %}a")).Message);
        Assert.Contains("never closed", Assert.Throws<FormatException>(() => JinjaTemplate.Parse("{{ a ")).Message);
        Assert.Contains("filter 'wordcount'", Assert.Throws<InvalidOperationException>(() => JinjaTemplate.Parse("{{ 'a' | wordcount }}").Render(new Dictionary<string, object?>())).Message);
    }

    [Fact]
    public void The_template_is_read_from_tokenizer_config_json_beside_the_checkpoint_with_its_special_tokens()
    {
        using var temp = Fixtures.TempDirectory();
        Assert.Null(ChatTemplate.TryLoadNextTo(temp.Path));
        File.WriteAllText(Path.Combine(temp.Path, "tokenizer_config.json"), """{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}""");
        Assert.Equal("<s>Hi</s>", ChatTemplate.TryLoadNextTo(Path.Combine(temp.Path, "model.safetensors"))!.Render([new("user", "Hi")]));
        File.WriteAllText(Path.Combine(temp.Path, "tokenizer_config.json"), """{"chat_template": "{% if %}"}""");
        Assert.Contains("tokenizer_config.json", Assert.Throws<FormatException>(() => ChatTemplate.TryLoadNextTo(temp.Path)).Message);
        File.WriteAllText(Path.Combine(temp.Path, "tokenizer_config.json"), "{\"chat_template\": ");
        Assert.Contains("tokenizer_config.json", Assert.Throws<FormatException>(() => ChatTemplate.TryLoadNextTo(temp.Path)).Message);
    }
}
