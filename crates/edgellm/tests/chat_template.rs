//! Chat templates rendered byte-for-byte like HF transformers: the Qwen2.5 GGUF's template over the
//! golden chat cases, the tiny fixtures' `chat_template.jinja`, tools and tool calls, errors.

mod common;

use edgellm::source::gguf::GgufFile;
use edgellm::tokenizer::{ChatMessage, ChatTemplate, FunctionCall, Tokenizer, ToolCall};
use edgellm::Error;
use serde_json::{json, Value};

/// The Qwen2.5 GGUF's `tokenizer.chat_template`, through its tokenizer.
fn qwen_template() -> Option<ChatTemplate> {
    let file = GgufFile::open(common::model_gguf("qwen2.5-coder-0.5b-instruct")?).unwrap();
    Tokenizer::from_gguf(&file).unwrap().chat_template_renderer().unwrap()
}

#[test]
fn qwen_gguf_template_renders_golden_prompts() {
    let Some(template) = qwen_template() else { return };
    let golden =
        common::read_json(common::shared_dir().join("golden/qwen2.5-coder-0.5b-instruct/golden.json"));
    let mut n = 0;
    for case in golden["cases"].as_array().unwrap().iter().filter(|c| c["chat"] == true) {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = template.render(&messages, true, None).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "case {}", case["name"]);
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn qwen_gguf_template_tools_and_tool_calls() {
    let Some(template) = qwen_template() else { return };
    let tool = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let call = ToolCall {
        id: Some("call_1".into()),
        kind: "function".into(),
        // As the OpenAI API sends arguments: a JSON string.
        function: FunctionCall { name: "get_weather".into(), arguments: json!("{\"city\": \"Paris\"}") },
    };
    let messages = vec![
        ChatMessage::user("Weather in Paris?"),
        ChatMessage { content: None, tool_calls: Some(vec![call]), ..ChatMessage::assistant("") },
        ChatMessage::tool("{\"temp\": 21}", "call_1"),
    ];
    let text = template.render(&messages, true, Some(&[tool])).unwrap();
    let expected_tool = r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#;
    assert!(text.contains(&format!("<tools>\n{expected_tool}\n</tools>")), "{text}");
    let expected_call = "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n";
    assert!(text.contains(expected_call), "{text}");
    assert!(
        text.contains("<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn tiny_fixture_templates_render_golden_chat() {
    let messages = [ChatMessage::system("You are terse."), ChatMessage::user("Grant of copyright license?")];
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"] {
        let dir = common::shared_dir().join("fixtures").join(name);
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let template = tokenizer.chat_template_renderer().unwrap().expect("fixture has a template");
        let golden = common::read_json(dir.join("golden.json"));
        let case = golden["cases"].as_array().unwrap().iter().find(|c| c["name"] == "chat").unwrap();
        let text = template.render(&messages, true, None).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
        let ids = tokenizer.encode(&text, true).unwrap();
        assert_eq!(serde_json::to_value(ids).unwrap(), case["prompt_ids"], "{name}");
    }
}

fn render(source: &str, context: Value) -> Result<String, Error> {
    let messages: Vec<ChatMessage> = serde_json::from_value(context["messages"].clone()).unwrap_or_default();
    let extra = context.as_object().cloned().unwrap_or_default();
    ChatTemplate::new(source)?.render_with(&messages, false, None, &extra)
}

fn template_error(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Template(msg)) => msg,
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_the_line() {
    let msg =
        template_error(ChatTemplate::new("hello\n{% for m in messages %}\n{{ m.content }\n{% endfor %}"));
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("{{ m.content }"), "{msg}");
}

#[test]
fn runtime_error_names_the_line() {
    let msg = template_error(render("a\nb\n{{ 1 + none }}\n", json!({})));
    assert!(msg.contains("line 3: `{{ 1 + none }}`"), "{msg}");
}

#[test]
fn raise_exception_surfaces_its_message() {
    let source = "{% if messages[0].role != 'user' %}\n  {{ raise_exception('Conversation roles must alternate user/assistant') }}\n{% endif %}";
    let msg = template_error(render(source, json!({"messages": [{"role": "assistant", "content": "x"}]})));
    assert!(msg.contains("Conversation roles must alternate user/assistant"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn tojson_writes_python_json() {
    let value = json!({"b": 1, "a": [1, 2.5, "é\n\"q\"", null, true], "e": {}, "l": []});
    let out = render("{{ v | tojson }}", json!({"v": value})).unwrap();
    assert_eq!(out, r#"{"b": 1, "a": [1, 2.5, "é\n\"q\"", null, true], "e": {}, "l": []}"#);
    let out = render("{{ v | tojson(indent=2) }}", json!({"v": {"k": [1, {"x": "<y>"}]}})).unwrap();
    assert_eq!(out, "{\n  \"k\": [\n    1,\n    {\n      \"x\": \"<y>\"\n    }\n  ]\n}");
    let out = render("{{ v | tojson(ensure_ascii=True, sort_keys=True) }}", json!({"v": {"z": "é", "a": 1}}))
        .unwrap();
    assert_eq!(out, r#"{"a": 1, "z": "\u00e9"}"#);
}

#[test]
fn python_methods_and_loop_controls() {
    let source = "{{ '  hi  '.strip() }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'abc'.startswith('ab') }}|\
                  {% for x in [1, 2, 3, 4] %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}|\
                  {{ {'k': 'v'}.items() | list | length }}|{{ strftime_now('%Y') | length }}";
    // Jinja2 prints Python booleans: `True`.
    assert_eq!(render(source, json!({})).unwrap(), "hi|a+b|True|12|1|4");
}

#[test]
fn bos_and_eos_tokens_are_variables() {
    let template =
        ChatTemplate::new("{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}")
            .unwrap()
            .with_special_tokens(Some("<s>".into()), Some("</s>".into()));
    assert_eq!(template.render(&[ChatMessage::user("hi")], false, None).unwrap(), "<s>hi</s>");
}

#[test]
fn messages_deserialize_from_openai_json() {
    let m: ChatMessage = serde_json::from_value(json!({"role": "assistant", "content": null,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}))
    .unwrap();
    assert_eq!(m.content, None);
    assert_eq!(m.tool_calls.unwrap()[0].function.name, "f");
    let m: ChatMessage =
        serde_json::from_value(json!({"role": "user", "content": [{"type": "text", "text": "hi"}]})).unwrap();
    let out = ChatTemplate::new("{% for p in messages[0].content %}{{ p.text }}{% endfor %}")
        .unwrap()
        .render(&[m], false, None)
        .unwrap();
    assert_eq!(out, "hi");
}
