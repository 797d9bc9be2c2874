#!/usr/bin/env python3
"""Writes tests/golden/yaml/cases.json: YAML snippets and what PyYAML makes of
them, for tests/lua/test_yaml.lua (lua/fsdp/yaml.lua, the reader of
`fsdp-lua prepare`). Each case: {"name", "yaml", and either "strings" (every
string value in file order, mapping keys left out, as prepare takes them)
or "error" (PyYAML's message: the file is not YAML)}; "refuse" marks YAML
that PyYAML takes and fsdp-lua refuses on purpose (anchors, tags, duplicate
keys). Plain scalars are resolved by YAML 1.2's core schema (what fsdp-lua
follows), not PyYAML's 1.1 one (yes/no/on/off stay strings).

    /usr/bin/python3 tests/golden/make_yaml_fixtures.py   (PyYAML 6)
"""
import json, os, random, re, yaml


class Core12Loader(yaml.SafeLoader):
    pass


Core12Loader.yaml_implicit_resolvers = {}
Core12Loader.add_implicit_resolver('tag:yaml.org,2002:null', re.compile(r'^(?:~|null|Null|NULL|)$'),
                                   ['~', 'n', 'N', ''])
Core12Loader.add_implicit_resolver('tag:yaml.org,2002:bool', re.compile(r'^(?:true|True|TRUE|false|False|FALSE)$'),
                                   list('tTfF'))
Core12Loader.add_implicit_resolver('tag:yaml.org,2002:int', re.compile(r'^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$'),
                                   list('-+0123456789'))
Core12Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$'),
    list('-+0123456789.'))


def strings(v, out):
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, list):
        for x in v:
            strings(x, out)
    elif isinstance(v, dict):
        for x in v.values():
            strings(x, out)
    return out


CASES = [
    ('mapping', 'title: a yaml title\nbody: |\n  block one\n  block two\nlist:\n  - "quoted item"\n  - 42\n'),
    ('scalars', 'a: plain text\nb: 12\nc: 1.5\nd: true\ne: null\nf: ~\ng: "12"\nh: \'it\'\'s\'\ni: yes\nj: -.inf\nk: 0x1F\n'),
    ('comments', '# head\na: one # trailing\nb: "two # not a comment"\nc: three#four\n'),
    ('nested', 'outer:\n  inner:\n    - x\n    - y: z\n      w: v\n  other: q\n'),
    ('seq of maps', '- name: a\n  text: first\n- name: b\n  text: second\n'),
    ('seq at key level', 'key:\n- a\n- b\nnext: c\n'),
    ('nested seqs', '- - a\n  - b\n- - c\n'),
    ('multi-line plain', 'a: this is\n  one long\n  line\n\n  with a break\nb: x\n'),
    ('double quoted', 'a: "tab\\tnew\\nline \\u00e9 \\x41 \\\\ \\""\n'),
    ('double quoted lines', 'a: "one\n  two\n\n  three"\n'),
    ('single quoted lines', "a: 'one\n  two'\n"),
    ('escaped break', 'a: "one\\\n  two"\n'),
    ('literal keep', 'a: |+\n  one\n\n\nb: x\n'),
    ('literal strip', 'a: |-\n  one\n  two\n\nb: x\n'),
    ('literal indicator', 'a: |2\n    indented\n  base\n'),
    ('folded', 'a: >\n  one\n  two\n\n  three\n    more\n  four\n'),
    ('folded strip', 'a: >-\n  x\n  y\n'),
    ('flow', 'a: [one, "two", 3, [four]]\nb: {k: v, n: 1, s: \'q\'}\n'),
    ('flow multi-line', 'a: [one,\n    two,\n    three]\n'),
    ('documents', '--- \na: one\n---\n- two\n...\n---\nthree\n'),
    ('top scalar', 'just a string\n'),
    ('empty', ''),
    ('only comments', '# nothing\n\n# here\n'),
    ('empty value', 'a:\nb: x\n'),
    ('unicode', 'a: héllo wörld ✓\n"quoted key": v\n'),
    ('crlf', 'a: one\r\nb: two\r\n'),
    ('colon in value', 'url: http://example.com/x\ntime: 12:30\n'),
    # not YAML
    ('bad indentation', 'a: 1\n   b: 2\n'),
    ('mapping in value', 'a: b: c\n'),
    ('unclosed double', 'a: "unterminated\n'),
    ('unclosed single', "a: 'unterminated\n"),
    ('unclosed flow', 'a: [one, two\n'),
    ('tab indent', 'a:\n\tb: c\n'),
    ('seq in map', 'a: x\n- b\n'),
    ('map in seq', '- a\nb: c\n'),
    ('dedent inside', 'a:\n    b: 1\n  c: 2\n'),
    ('bad escape', 'a: "\\q"\n'),
    ('junk after quote', 'a: "x" y\n'),
    ('two top values', 'a\nb: c\n'),
    ('reserved', 'a: @x\n'),
    ('flow junk', 'a: [x] y\n'),
    # YAML that fsdp-lua refuses on purpose
    ('anchor', 'a: &x one\nb: *x\n'),
    ('tag', 'a: !!str 5\n'),
    ('duplicate key', 'a: one\na: two\n'),
    ('directive', '%YAML 1.2\n---\na: b\n'),
]
REFUSE = {'anchor': 'anchors and aliases', 'tag': 'tags', 'duplicate key': 'duplicate keys',
          'directive': 'directives'}

out = []
for name, text in CASES:
    case = {'name': name, 'yaml': text}
    try:
        docs = list(yaml.load_all(text, Loader=Core12Loader))
        case['strings'] = strings(docs, [])
    except yaml.YAMLError as e:
        case['error'] = str(e).replace('\n', ' ')
    if name in REFUSE:
        case['refuse'] = REFUSE[name]
    out.append(case)

# damaged variants of the valid cases (a fixed seed): one character replaced,
# inserted or removed, or the text cut short; "mutant": what fsdp-lua must
# do is refuse where PyYAML refuses, and where PyYAML reads it either read
# the same strings or refuse (never other strings)
rng = random.Random(20240520)
for name, text in CASES:
    if not text or name in REFUSE:
        continue
    for k in range(12):
        pos = rng.randrange(len(text))
        how = rng.choice(['replace', 'insert', 'delete', 'cut'])
        ch = rng.choice(['"', "'", ':', '-', ' ', '  ', '[', ']', '{', '}', '|', '>', '#', '\n', ',', 'x', '&', '*', '!'])
        ch = ch.replace('\\n', '\n')
        if how == 'replace':
            t = text[:pos] + ch + text[pos + 1:]
        elif how == 'insert':
            t = text[:pos] + ch + text[pos:]
        elif how == 'delete':
            t = text[:pos] + text[pos + 1:]
        else:
            t = text[:pos]
        case = {'name': '%s/%s%d' % (name, how, k), 'yaml': t, 'mutant': True}
        try:
            docs = list(yaml.load_all(t, Loader=Core12Loader))
            case['strings'] = strings(docs, [])
        except yaml.YAMLError as e:
            case['error'] = str(e).replace('\n', ' ')
        except Exception as e:   # PyYAML's constructor fails on some (unhashable keys ...)
            case['error'] = '%s: %s' % (type(e).__name__, e)
        out.append(case)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'yaml', 'cases.json')
with open(path, 'w') as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write('\n')
print('wrote', path, len(out), 'cases')
