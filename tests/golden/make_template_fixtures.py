#!/usr/bin/env python3
"""Chat-template fixtures for tests/c/test_template.c and tests/lua/test_chat_template.lua.

    /work/venv/bin/python tests/golden/make_template_fixtures.py     # transformers 5.x, jinja2, tokenizers

writes, under tests/golden/templates/:

  conformance.json   small templates, each with its variables and what
                     transformers' Jinja environment (the one
                     apply_chat_template compiles with: trim_blocks,
                     lstrip_blocks, loop controls, the generation tag,
                     raise_exception, tojson as json.dumps) renders from them,
                     or that it fails
  <style>/           a tiny tokenizer directory per chat-template style:
                     tokenizer.json (a small BPE trained here with the
                     `tokenizers` library) and tokenizer_config.json holding
                     the chat template and the special tokens, plus
                     expected.json: for every conversation, with and without
                     add_generation_prompt, apply_chat_template's text and
                     token ids (or its error), and the loss mask of the
                     conversation (below)

The styles are written after the published formats of ChatML, Llama 2,
Llama 3, Llama 3.1 (with tools), Mistral, Zephyr, Gemma and Qwen 2.5 (with
tools), plus ChatML with {% generation %} blocks.

Masks: for templates with {% generation %} blocks, transformers'
return_assistant_tokens_mask; for the others the prefix method the loader
documents (fsdp.chat_template): for each assistant message i the text
between render(messages[:i], add_generation_prompt=True) and
render(messages[:i+1]), marked on the tokens that overlap it according to
the tokenizer's own offsets.

Needs transformers (5.x), jinja2 and tokenizers; used only to make
fixtures, never by tests.
"""
import json
import os
import shutil
import sys

import jinja2
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "templates")
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")

# ---------------------------------------------------------------------------
# conformance: (template, variables)

MSGS = [{"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": "A tester.\n"}]

CASES = [
    # whitespace control, trim_blocks, lstrip_blocks, comments, raw, newlines
    ("a  {{- 'b' -}}  c", {}),
    ("a\n  {% if true %}\nX\n  {% endif %}\nb", {}),
    ("a\n  {%+ if true %}\nX\n  {%- endif %}\nb", {}),
    ("{% if true +%}\nx{% endif %}", {}),
    ("  {{ 'x' }}\n  {{ 'y' }}\n", {}),
    ("x\n", {}),
    ("x\n\n", {}),
    ("a\r\nb\rc", {}),
    ("a {# note #} b", {}),
    ("a\n  {# note #}\nb", {}),
    ("a {#- note -#} b", {}),
    ("{% raw %}{{ not rendered }}{% endraw %}", {}),
    ("A\n\t{% for i in [1, 2] %}\n\t{{ i }}\n\t{% endfor %}\nB", {}),
    ("{%- for i in [1, 2] -%}\n   {{ i }}   \n{%- endfor -%}\n  end", {}),
    ("{% for m in messages %}\n{% if m.role == 'user' %}\n{{ m.content }}\n{% endif %}\n{% endfor %}", {"messages": MSGS}),
    ("   {% if true %}x{% endif %}", {}),
    ("t {% if true %}x{% endif %}", {}),
    ("{{ 'a' }}\n{% if true %}\nb\n{% endif %}", {}),
    # arithmetic, precedence, numbers
    ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 10 - 2 - 3 }}", {}),
    ("{{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7.5 // 2 }} {{ 7.5 % 2 }}", {}),
    ("{{ 1 / 4 }} {{ 10 / 3 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1.5e-7 }} {{ 123456789.0 * 1000 }} {{ 2.0 }} {{ 1_000 }}", {}),
    ("{{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ -0.0 }} {{ 3.14159 }} {{ 2 ** -1 }} {{ 5 / 5 }}", {}),
    ("{{ x + y }} {{ x * 1.5 }} {{ n - 1 }}", {"x": 2, "y": 0.5, "n": 10}),
    ("{{ 'a' ~ 1 ~ none ~ true ~ 1.0 }} {{ 'ab' * 2 }} {{ 2 * 'c' }} {{ [1] * 2 }}", {}),
    ("{{ 'a' + 'b' }} {{ [1, 2] + [3] }} {{ -x }} {{ +x }}", {"x": 3}),
    # comparisons and logic
    ("{{ 1 < 2 < 3 }} {{ 1 < 2 > 3 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ true == 1 }}", {}),
    ("{{ 'a' in 'cat' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ none == none }} {{ 'x' != 'y' }}", {}),
    ("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' or [] }} {{ not none }} {{ not 1 == 2 }} {{ none and 1 }}", {}),
    ("{{ 'a' if 1 else 'b' }}|{{ 'a' if 0 }}|{{ 'a' if 0 else 'b' if 1 else 'c' }}", {}),
    ("{{ 'yes' if messages[0]['role'] == 'system' else 'no' }}", {"messages": MSGS}),
    ("{{ 3 >= 3 }} {{ 2 <= 1 }} {{ 'b' > 'a' }} {{ [1, 2] < [1, 3] }}", {}),
    # literals and printing
    ("{{ [1, 'a', [2], none, true, 1.5] }} {{ (1,) }} {{ (1, 2) }} {{ () }}", {}),
    ("{{ {'a': 1, 2: 'b', 'c': [none]} }} {{ {} }} {{ [] }}", {}),
    ("{{ 'a' 'b' }} {{ \"q\\\"x\" }} {{ 'tab\\there\\n' }} {{ '\\u00e9\\x41\\101' }} {{ 'back\\\\slash' }}", {}),
    ("{{ [\"it's\"] }} {{ ['say \"hi\"'] }} {{ ['both \\' \"'] }} {{ ['nl\\n\\t\\x01'] }} {{ ['é😀'] }}", {}),
    ("{{ x }}|{{ d }}|{{ l }}|{{ f }}|{{ b }}|{{ n }}", {"x": "s", "d": {"k": [1, 2.5]}, "l": [1, "two"], "f": 0.1,
                                                        "b": False, "n": None}),
    # subscripts and attributes
    ("{{ messages[0].content }}|{{ messages[-1]['role'] }}|{{ messages.0.role }}|{{ messages[1:][0].role }}", {"messages": MSGS}),
    ("{{ 'hello'[1:3] }} {{ 'hello'[-2:] }} {{ [1, 2, 3, 4][::2] }} {{ [1, 2, 3][::-1] }} {{ 'héllo'[1] }} {{ 'abc'[-1] }}", {}),
    ("[{{ [1, 2, 3][5] }}][{{ x.y }}][{{ x['y'] }}][{{ messages[0].missing }}]", {"x": {}, "messages": MSGS}),
    ("{{ messages[0]['content'] is defined }} {{ messages[0].tool_calls is defined }} {{ undefined_name is undefined }}", {"messages": MSGS}),
    # string methods
    ("[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ 'xxaxx'.strip('x') }}][{{ 'abc'.lstrip('ab') }}]", {"s": "  pad\n "}),
    ("{{ s.startswith('He') }} {{ s.endswith(('x', 'd')) }} {{ s.upper() }} {{ s.lower() }} {{ s.title() }} {{ s.capitalize() }}", {"s": "Hello woRld"}),
    ("{{ s.replace('a', 'o') }} {{ s.replace('a', 'o', 1) }} {{ s.split() }} {{ s.split('a') }} {{ s.split('a', 1) }} {{ s.rsplit('a', 1) }}", {"s": "banana  bread"}),
    ("{{ ', '.join(['a', 'b']) }} {{ s.find('na') }} {{ s.find('zz') }} {{ s.count('a') }} {{ 'a\\nb\\r\\nc'.splitlines() }}", {"s": "banana"}),
    ("{{ 'ÉCOLE'.lower() }} {{ 'straße'.upper() == 'STRASSE' }} {{ 'über'.capitalize() }} {{ 'δέλτα'.upper() }}", {}),
    ("{{ '  x  y  '.split() }} {{ 'a,b,,c'.split(',') }} {{ '123'.isdigit() }} {{ 'ab'.isdigit() }}", {}),
    # dict methods
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }}", {"d": {"b": 2, "a": 1}}),
    # filters
    ("[{{ s | trim }}][{{ s | length }}][{{ 'é😀' | length }}][{{ [1, 2] | length }}][{{ {'a': 1} | length }}][{{ s | count }}]", {"s": "  hi \t"}),
    ("{{ 'aB' | upper }} {{ 'aB' | lower }} {{ 'hello world' | capitalize }} {{ 'hello world' | title }} {{ 'x' | string }}", {}),
    ("{{ x | tojson }}", {"x": {"b": 1.0, "a": [1, "é\n\"q\"", None, True, 1e-05, 12345678.5], "c": {}, "d": []}}),
    ("{{ x | tojson(indent=2) }}", {"x": {"b": 1.0, "a": [1, {"z": [], "y": {}}], "c": "<&>'"}}),
    ("{{ x | tojson(indent=4, sort_keys=true) }}", {"x": {"b": 1, "a": [1, 2], "c": {"z": 1, "y": 2}}}),
    ("{{ x | tojson(separators=(',', ':')) }} {{ x | tojson(ensure_ascii=true) }}", {"x": {"k": ["é", "😀", "\u0001"]}}),
    ("{{ 'a\"b' | tojson }} {{ 3 | tojson }} {{ 2.5 | tojson }} {{ none | tojson }} {{ true | tojson }}", {}),
    ("{{ ['a', 'b'] | join }} {{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join('-') }} {{ users | join(', ', attribute='name') }}", {"users": [{"name": "x"}, {"name": "y"}]}),
    ("{{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ 'abc' | first }} {{ [] | first }}|", {}),
    ("[{{ x | default('d') }}][{{ '' | default('d') }}][{{ '' | default('d', true) }}][{{ none | d('n') }}][{{ 0 | d(5, boolean=true) }}]", {}),
    ("{{ messages | map(attribute='role') | join(',') }} {{ ['a', 'b'] | map('upper') | list }}", {"messages": MSGS}),
    ("{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ [0, 1, none, ''] | select | list }}", {}),
    ("{{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('role', 'eq', 'system') | map(attribute='role') | list }}", {"messages": MSGS}),
    ("{{ messages | selectattr('tool_calls', 'defined') | list | length }} {{ messages | selectattr('content') | list | length }}", {"messages": MSGS}),
    ("{{ d | items | list }} {{ d | dictsort }}", {"d": {"b": 1, "a": 2}}),
    ("{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }}", {}),
    ("{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ users | sort(attribute='age') | map(attribute='name') | list }}", {"users": [{"name": "x", "age": 3}, {"name": "y", "age": 1}]}),
    ("{{ [1, 2, 1, 3] | unique | list }} {{ [1, 2, 3] | sum }} {{ [1, 5, 3] | max }} {{ [4, 2, 8] | min }} {{ -3 | abs }} {{ 2.567 | round(1) }}", {}),
    ("{{ '42' | int + 1 }} {{ '3.5' | float }} {{ 'x' | int }} {{ 3.9 | int }} {{ 2 | float }}", {}),
    ("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'one two  three' | wordcount }}", {}),
    # tests
    ("{{ x is defined }} {{ y is undefined }} {{ none is none }} {{ x is string }} {{ 1 is number }} {{ d is mapping }} {{ l is iterable }} {{ l is sequence }}", {"x": "s", "d": {}, "l": []}),
    ("{{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ false is false }} {{ 1 is integer }} {{ 1.0 is float }} {{ 1 is eq 1 }} {{ 2 is equalto 3 }}", {}),
    ("{{ 4 is divisibleby 2 }} {{ 3 is odd }} {{ 3 is even }} {{ 'a' is in 'abc' }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ x is not none }} {{ 1 is ne 2 }}", {"x": 1}),
    ("{{ 'x' is sameas 'x' }} {{ 2 is gt 1 }} {{ 2 is lt 1 }} {{ 2 is ge 2 }} {{ 2 is le 1 }}", {}),
    # loops
    ("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}", {"messages": MSGS}),
    ("{% for x in [1, 2, 3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }} {{ loop.cycle('odd', 'even') }};{% endfor %}", {}),
    ("{% for x in [] %}x{% else %}empty{% endfor %} {% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}", {}),
    ("{% for x in [1, 2, 3, 4, 5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }};{% endfor %}", {}),
    ("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %} {% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for c in 'héy' %}[{{ c }}]{% endfor %}", {}),
    ("{% for x in missing %}never{% endfor %}done", {}),
    # scoping, set, namespace
    ("{% set a = 0 %}{% for x in [1, 2, 3] %}{{ a }}{% if loop.first %}{% set a = 5 %}{% endif %}{{ a }};{% endfor %}{{ a }}", {}),
    ("{% set ns = namespace(n=0, found=false) %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.n }} {{ ns.found }}", {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }} {% set t = (3, 4) %}{{ t[1] }} {% set block %}in {{ a }} block{% endset %}[{{ block }}]", {}),
    ("{% if true %}{% set inner = 'kept' %}{% endif %}{{ inner }} {% set messages = messages[1:] %}{{ messages | length }}", {"messages": MSGS}),
    ("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} {{ dict(a=1, b='x') }} {{ namespace(a=1).a }}", {}),
    ("{% set d = {'k': 'v'} %}{{ d.k }} {{ d['k'] }} {% set l = ['x', 'y'] %}{{ l[1] }}", {}),
    # generation blocks (their text only; spans are checked on the styles)
    ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}", {"messages": MSGS}),
    # errors
    ("{{ raise_exception('Roles must alternate') }}", {}),
    ("{{ x.y }}", {}),
    ("{{ messages[0].missing.deeper }}", {"messages": MSGS}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ [1, 2] | length + undefined_thing }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{{ none.attr }}", {}),
    ("{{ 'a' < 1 }}", {}),
    ("{% set x = 1 %}{% set x.y = 2 %}", {}),
]

# compile-time errors (Jinja refuses them before rendering)
COMPILE_ERRORS = [
    "{{ x | no_such_filter }}",
    "{{ x is no_such_test }}",
    "{% for x in y %}",
    "{% if x %}",
    "{% endfor %}",
    "{{ x ",
    "{{ 'unterminated }}",
    "{% include 'other.j2' %}",
    "{% break %}",
    "{{ (1, 2 }}",
    "{# never closed",
    "{% raw %} never closed",
    "{{ x @ y }}",
]


def jinja_env_render(template, variables):
    compiled = _compile_jinja_template(template)
    return compiled.render(**variables)


def conformance():
    cases = []
    for template, variables in CASES:
        entry = {"template": template, "vars": variables}
        try:
            entry["text"] = jinja_env_render(template, json.loads(json.dumps(variables)))
        except Exception as e:  # noqa: BLE001 - every failure is an expected error case
            entry["error"] = "%s: %s" % (type(e).__name__, e)
        cases.append(entry)
    for template in COMPILE_ERRORS:
        entry = {"template": template, "vars": {}}
        try:
            _compile_jinja_template(template)
            entry["text"] = jinja_env_render(template, {})
        except Exception as e:  # noqa: BLE001
            entry["error"] = "%s: %s" % (type(e).__name__, e)
        cases.append(entry)
    return cases


# ---------------------------------------------------------------------------
# chat-template styles

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

CHATML_GENERATION = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CHATML_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
SP_SPECIAL = ["<unk>", "<s>", "</s>"]
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

# name: (template, tokenizer kind, special tokens to add, tokenizer_config special tokens)
STYLES = {
    "chatml": (CHATML, "bytelevel", CHATML_SPECIAL, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "chatml_generation": (CHATML_GENERATION, "bytelevel", CHATML_SPECIAL, {"eos_token": "<|im_end|>"}),
    "llama2": (LLAMA2, "sentencepiece", SP_SPECIAL, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "llama3": (LLAMA3, "bytelevel", LLAMA3_SPECIAL, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama31_tools": (LLAMA31, "bytelevel", LLAMA3_SPECIAL, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "mistral": (MISTRAL, "sentencepiece", SP_SPECIAL, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "zephyr": (ZEPHYR, "bytelevel", ["<|endoftext|>", "<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}),
    "gemma": (GEMMA, "sentencepiece", GEMMA_SPECIAL, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                                     "unk_token": "<unk>"}),
    "qwen25": (QWEN25, "bytelevel", CHATML_SPECIAL, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city, \"now\".",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Name, e.g. Zürich"},
                                                    "days": {"type": "integer", "minimum": 1}},
                   "required": ["city"]}}}]

CONVERSATIONS = [
    ("system_user_assistant", [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."}], {}),
    ("multi_turn", [
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats."},
        {"role": "assistant", "content": "  Why did the cat sit on the computer? To keep an eye on the mouse!  "}], {}),
    ("user_only", [
        {"role": "user", "content": "Write one line of verse."}], {}),
    ("unicode_whitespace", [
        {"role": "user", "content": "\n  café naïve 日本語 😀\ttabs\n\n"},
        {"role": "assistant", "content": "Ångström,\r\nline two — done.\n"}], {}),
    ("null_field_and_extra_keys", [
        {"role": "user", "content": "Count to three.", "name": "alice", "tool_calls": None},
        {"role": "assistant", "content": "1, 2, 3.", "weight": 1.0}], {}),
    ("tools", [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "{\"temp\": 21.5}"},
        {"role": "assistant", "content": "It is 21.5 degrees."}], {"tools": TOOLS}),
    ("system_only_user_first_bad", [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "Odd order."}], {}),
]


def train_tokenizer(kind, special, corpus):
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([corpus], trainer=trainer)
        tok.decoder = decoders.ByteLevel()
        return tok
    # SentencePiece-style as Llama 2 / Mistral / Gemma: Prepend + Replace normalizer, byte fallback
    base = [s for s in special] + ["<0x%02X>" % b for b in range(256)]
    tmp = Tokenizer(models.BPE())
    tmp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=120, show_progress=False)
    tmp.train_from_iterator([line for line in corpus.replace("\n", " ").split(".  ")], trainer=trainer)
    m = json.loads(tmp.to_str())["model"]
    vocab = {t: i for i, t in enumerate(base)}
    for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in m["merges"]]
    unk = "<unk>"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens(special)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    return tok


def prefix_mask(tokenizer, template, messages, tools, text, offsets):
    """1 on tokens overlapping an assistant message's text (the prefix method)"""
    mask = [0] * len(offsets)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:  # apply_chat_template refuses an empty conversation: the template itself
            before = _compile_jinja_template(template).render(messages=[], tools=tools, documents=None,
                                                              add_generation_prompt=True, **tokenizer.special_tokens_map)
        else:
            before = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:i + 1], tools=tools, tokenize=False)
        assert text.startswith(before) and text.startswith(upto), "not prefix-consistent"
        a, b = len(before), len(upto)
        for k, (s, e) in enumerate(offsets):
            if s < b and e > a:
                mask[k] = 1
    return mask


def style(name, corpus):
    template, kind, special, config_tokens = STYLES[name]
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = train_tokenizer(kind, special, corpus)
    tok.save(os.path.join(d, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
    config.update(config_tokens)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
    tokenizer = AutoTokenizer.from_pretrained(d)
    has_generation = "{% generation %}" in template
    cases = []
    for conv_name, messages, extra in CONVERSATIONS:
        tools = extra.get("tools")
        for agp in (False, True):
            entry = {"conversation": conv_name, "messages": messages, "add_generation_prompt": agp}
            if tools:
                entry["tools"] = tools
            try:
                text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=agp)
                out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=agp,
                                                    return_dict=True)
                entry["text"] = text
                entry["ids"] = list(out["input_ids"])
                if not agp:
                    if has_generation:
                        masked = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                                               return_assistant_tokens_mask=True)
                        entry["mask"] = list(masked["assistant_masks"])
                        entry["mask_method"] = "generation"
                    else:
                        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                        assert list(enc["input_ids"]) == entry["ids"]
                        try:
                            entry["mask"] = prefix_mask(tokenizer, template, messages, tools, text, enc["offset_mapping"])
                            entry["mask_method"] = "prefix"
                        except Exception as e:  # noqa: BLE001 - the template refuses a prefix
                            entry["mask_error"] = "%s: %s" % (type(e).__name__, e)
            except Exception as e:  # noqa: BLE001 - templates refuse some conversations
                entry["error"] = "%s: %s" % (type(e).__name__, e)
            cases.append(entry)
    exp = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
           "tokenizers": tokenizers.__version__, "cases": cases}
    write_cases(os.path.join(d, "expected.json"), exp)
    ok = sum(1 for c in cases if "text" in c)
    print("%-18s %3d cases (%d rendered, %d errors)" % (name, len(cases), ok, len(cases) - ok))


def write_cases(path, exp):
    """one case per line"""
    head = {k: v for k, v in exp.items() if k != "cases"}
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in exp["cases"]))
        f.write("\n]}\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(CORPUS, encoding="utf-8") as f:
        corpus = f.read()[:200000]
    cases = conformance()
    write_cases(os.path.join(OUT, "conformance.json"),
                {"jinja2": jinja2.__version__, "transformers": transformers.__version__, "cases": cases})
    print("conformance        %3d cases (%d errors)" % (len(cases), sum(1 for c in cases if "error" in c)))
    for name in STYLES:
        style(name, corpus)


if __name__ == "__main__":
    sys.exit(main())
