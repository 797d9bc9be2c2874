#!/usr/bin/env python3
"""Tokenizer fixtures for tests/c/test_tokenizer.c and tests/lua/test_tokenizer.lua.

    python3 tests/golden/make_tokenizer_fixtures.py

trains small tokenizers on tiny Shakespeare with the real Hugging Face
`tokenizers` library and writes, under tests/golden/tokenizers/:

  <name>/tokenizer.json   the tokenizer, as the library saves it
  <name>/expected.json    what the library makes of it: the torture strings
                          with their ids (plain and with special tokens), the
                          decoded strings, special ids and a few vocab entries
  <name>/corpus.tok       the whole corpus encoded chunk by chunk, in the
                          project's token-file format (engine/tokens.c:
                          256 int32 header, then uint16 ids)

The three main tokenizers mirror the pipelines of real models:

  gpt2like     byte-level BPE as GPT-2: ByteLevel pre-tokenizer with the GPT-2
               regex, ByteLevel decoder, <|endoftext|>; merges stored in the
               legacy "a b" string form
  llama3like   as Llama 3: Split with Llama 3's regex, then
               ByteLevel(use_regex=False), ignore_merges, <|begin_of_text|>
               added by a TemplateProcessing inside a Sequence processor;
               merges stored as [a, b] pairs
  llama2like   SentencePiece-style BPE as Llama 2 / Mistral:
               Sequence[Prepend("▁"), Replace(" ", "▁")] normalizer, no
               pre-tokenizer, byte_fallback with the 256 <0xXX> tokens, <unk>,
               fuse_unk, Replace/ByteFallback/Fuse/Strip decoder, <s> added by
               a TemplateProcessing

and variants/ holds small tokenizers (tokenizer.json + expected.json, no
corpus) that exercise the other options the loader accepts: add_prefix_space,
Roberta/OPT-style processors, added tokens with lstrip/rstrip/single_word and
normalized matching, every Split behavior and invert, Digits, Metaspace with
each prepend scheme, unk without byte fallback, continuing_subword_prefix and
end_of_word_suffix, ignore_merges on a vocab where it changes the result.

Corpus chunks: the text cut after every blank line ("\\n\\n"), so that the
chunks concatenate to the file; each chunk is encoded without special tokens
and the ids are concatenated. The C test cuts the same way. expected.json
also holds the count and FNV-1a-64 hash (over the ids as little-endian
uint32) of the whole file encoded in one call.

Needs `pip install tokenizers`; used only to make fixtures, never by tests.
"""
import json
import os
import struct
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "tokenizers")
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")

GPT2_SPECIAL = "<|endoftext|>"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Strings that stress every stage: accents, CJK, emoji with ZWJ and skin
# tones, every kind of whitespace, digit runs, contractions, special-token
# look-alikes, and characters where Unicode property tables matter.
TORTURE = [
    "",
    " ",
    "  ",
    "\n",
    "Hello world",
    " Hello world",
    "Hello world ",
    "Hello  world",
    "Hello   \t  world\t\t",
    "line one\nline two\r\nline three\r\n\r\n",
    "\n\n\nThree newlines first",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\tand\ttabs\t",
    "It's, isn't, we'll, they've, I'm, you'd, she's, IT'S, We'LL",
    "'s 't 're 've 'm 'll 'd",
    "digits 1 12 123 1234 12345 3.14159 1,000,000 2024-05-20",
    "٣٤٥ Arabic-Indic digits and ½ ⅓ vulgar fractions",
    "café naïve résumé Ångström Æsir smørrebrød",
    "e\u0301 combining acute, n\u0303 tilde",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "Mixed 中文 and English and emoji 🎉!",
    "Ελληνικά και Русский текст",
    "עברית ועربي",
    "nbsp\u00a0here, ideographic\u3000space, em\u2003space",
    "mongolian\u180evowel separator and zero\u200bwidth",
    "line\u2028separator and paragraph\u2029separator",
    "control \x01\x02\x1f chars and DEL \x7f",
    "NEL\x85next line",
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    "Hello <|endoftext|> world",
    "<|endoftext|><|endoftext|>",
    "<s>",
    "<s>Hello</s>",
    "Hello <s> world </s>",
    "<unk>",
    "<|begin_of_text|>The start",
    "<|end_of_text|>",
    "<0x41> is not a byte here",
    "▁already▁has▁metaspace",
    "KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;",
    "A" * 300,
    "ab" * 200 + " " + "xyz" * 50,
    "$&3;:?!-.,",
    "\U0001F600\U0001F600\U0001F600",
    "x" + "\u0300" * 20,
    "\ufeffBOM at start",
    "Ａｌｐｈａ fullwidth",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters 𝟙𝟚𝟛",
]


def read_corpus():
    with open(CORPUS, encoding="utf-8", newline="") as f:
        return f.read()


def chunks_of(text):
    """the text cut after every blank line; the pieces concatenate to text"""
    out, start = [], 0
    while True:
        i = text.find("\n\n", start)
        if i < 0:
            break
        out.append(text[start:i + 2])
        start = i + 2
    if start < len(text):
        out.append(text[start:])
    return out


def write_tokens(path, ids, vocab_size):
    """the project's token file: 256 int32 header, uint16 tokens"""
    assert all(0 <= i < 65536 for i in ids)
    n = len(ids)
    header = [0] * 256
    header[0] = 20240520
    header[1] = 1
    header[2] = n & 0x7FFFFFFF
    header[3] = n >> 31
    header[4] = vocab_size
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % n, *ids))


def fnv64(ids):
    h = 0xcbf29ce484222325
    for b in struct.pack("<%dI" % len(ids), *ids):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def vocab_size_of(tok):
    """max id + 1 over the model vocab and the added tokens (the loader's definition)"""
    ids = list(tok.get_vocab(with_added_tokens=True).values())
    return max(ids) + 1


def expected(tok, strings):
    cases = []
    for s in strings:
        enc = tok.encode(s, add_special_tokens=False)
        enc_sp = tok.encode(s, add_special_tokens=True)
        cases.append({
            "text": s,
            "ids": enc.ids,
            "ids_special": enc_sp.ids,
            "decoded": tok.decode(enc_sp.ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(enc_sp.ids, skip_special_tokens=True),
            "decoded_plain": tok.decode(enc.ids, skip_special_tokens=False),
        })
    return cases


def token_samples(tok, n=40):
    """a spread of (id, token) pairs for token_to_id / id_to_token"""
    size = vocab_size_of(tok)
    step = max(1, size // n)
    out = []
    for i in range(0, size, step):
        t = tok.id_to_token(i)
        if t is not None:
            out.append([i, t])
    for t in tok.get_added_tokens_decoder().values():
        out.append([tok.token_to_id(t.content), t.content])
    return out


def save(name, tok, strings, corpus=None, extra=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok_json = json.loads(tok.to_str())
    if extra and extra.get("legacy_merges"):
        # the pre-0.20 form of the merges: "a b" strings
        tok_json["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                       for m in tok_json["model"]["merges"]]
    if extra and "model_patch" in extra:
        tok_json["model"].update(extra["model_patch"])
    if extra and "patch" in extra:
        extra["patch"](tok_json)
    text = json.dumps(tok_json, ensure_ascii=False, indent=2)
    tok = Tokenizer.from_str(text)   # what we test is what we saved
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    exp = {
        "library": "tokenizers " + tokenizers.__version__,
        "vocab_size": vocab_size_of(tok),
        "cases": expected(tok, strings),
        "tokens": token_samples(tok),
    }
    if extra and "special" in extra:
        exp["special"] = extra["special"]
    if corpus is not None:
        chunks = chunks_of(corpus)
        ids = []
        for enc in tok.encode_batch(chunks, add_special_tokens=False):
            ids.extend(enc.ids)
        write_tokens(os.path.join(d, "corpus.tok"), ids, exp["vocab_size"])
        whole = tok.encode(corpus, add_special_tokens=False).ids
        exp["corpus"] = {"file": "corpus.tok", "chunks": len(chunks), "tokens": len(ids),
                         "bytes": len(corpus.encode("utf-8")),
                         "whole_tokens": len(whole), "whole_fnv64": fnv64(whole)}
    with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, indent=1)
    print("%-40s vocab %5d  %6d bytes%s" % (
        name, exp["vocab_size"], len(text.encode("utf-8")),
        "  corpus %d tokens" % exp["corpus"]["tokens"] if corpus is not None else ""))
    return tok


# ---- byte-level tokenizers ---------------------------------------------------

def train_byte_level(corpus, vocab_size, pre_tokenizer, special, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus], trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2like(corpus):
    tok = train_byte_level(corpus, 1000, pre_tokenizers.ByteLevel(add_prefix_space=False),
                           [GPT2_SPECIAL])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return save("gpt2like", tok, TORTURE, corpus, {
        "legacy_merges": True,
        "special": {"bos": 0, "eos": 0, "pad": -1, "n_prefix": 0, "n_suffix": 0}})


def llama3like(corpus):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
               "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"]
    tok = train_byte_level(corpus, 1000, pre, special, ignore_merges=True)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", 0)]),
    ])
    return save("llama3like", tok, TORTURE, corpus, {
        "special": {"bos": 0, "eos": 1, "pad": -1, "n_prefix": 1, "n_suffix": 0}})


# ---- SentencePiece-style ----------------------------------------------------

def sp_vocab(corpus, vocab_size):
    """Llama 2's vocab layout: <unk> <s> </s>, the 256 byte tokens, then
    merged pieces trained on words that each start with ▁ (newlines never
    enter the alphabet, so they go through byte fallback as in Llama 2)"""
    base = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(base), show_progress=False)
    tok.train_from_iterator([line for line in corpus.replace("\n", " ").split(".  ")], trainer=trainer)
    m = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(base)}
    for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in m["merges"]]
    return vocab, merges


def sp_decoder():
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                              decoders.Strip(content=" ", left=1, right=0)])


def sp_tokenizer(vocab, merges, byte_fallback=True, unk="<unk>", fuse_unk=True):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=fuse_unk,
                               byte_fallback=byte_fallback))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def llama2like(corpus, vocab, merges):
    tok = sp_tokenizer(vocab, merges)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = sp_decoder()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return save("llama2like", tok, TORTURE, corpus, {
        "special": {"bos": 1, "eos": 2, "pad": -1, "n_prefix": 1, "n_suffix": 0}})


# ---- variants ------------------------------------------------------------------

SHORT = [
    "", " ", "Hello world", " Hello  world ", "a-b--c", "the-final--countdown", "x 12 345 6789 y",
    "Hello<s>world", "Hello <s> world", "Hello <mask> world <mask>x", "mask<mask> <mask>",
    "hello world and Hello World", "ahello worldb hello world!", "tab\there", "two\n\nlines",
    "café 日本 😀", "It's 'll", "  <s>  </s>  ", "▁x▁▁y", "<pad><pad>", "First Citizen:\nSpeak.",
]


def variants(corpus, sp_vocab_small, sp_merges_small):
    small = corpus[:200000]

    # RoBERTa / OPT style: add_prefix_space, added tokens with options
    tok = train_byte_level(small, 320, pre_tokenizers.ByteLevel(add_prefix_space=True),
                           ["<s>", "<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True, rstrip=False, special=True,
                                                  normalized=False)])
    tok.add_tokens([tokenizers.AddedToken("hello world", normalized=True),
                    tokenizers.AddedToken("ahello", single_word=True, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    save("variants/roberta", tok, SHORT + TORTURE[:20])

    tok = train_byte_level(small, 300, pre_tokenizers.ByteLevel(add_prefix_space=False),
                           ["<s>", "<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True, rstrip=True, special=True,
                                                  normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)])
    save("variants/opt", tok, SHORT + TORTURE[:20])

    # every Split behavior (on a literal and on a regex), invert, Digits
    behaviors = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
    base = train_byte_level(small, 280, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<s>"])
    base_json = json.loads(base.to_str())
    for b in behaviors:
        for pattern, tag in ((" ", "str"), (Regex(r"-+|\s"), "re")):
            for invert in (False, True):
                if invert and tag == "str":
                    continue
                tok = Tokenizer.from_str(json.dumps(base_json))
                tok.pre_tokenizer = pre_tokenizers.Sequence([
                    pre_tokenizers.Split(pattern, behavior=b, invert=invert),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
                save("variants/split_%s_%s%s" % (tag, b, "_invert" if invert else ""), tok, SHORT)
    for individual in (False, True):
        tok = Tokenizer.from_str(json.dumps(base_json))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=individual),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        save("variants/digits_%s" % ("individual" if individual else "runs"), tok, SHORT + TORTURE)

    # Metaspace pre-tokenizer (newer Llama / Mistral conversions, T5-style)
    for scheme, split in (("first", False), ("always", True), ("never", True), ("first", True)):
        tok = sp_tokenizer(sp_vocab_small, sp_merges_small)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
        save("variants/metaspace_%s%s" % (scheme, "_split" if split else ""), tok, SHORT + TORTURE)

    # the older JSON form of Metaspace (add_prefix_space, no prepend_scheme / split)
    def legacy_metaspace(j):
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
        j["decoder"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    tok = sp_tokenizer(sp_vocab_small, sp_merges_small)
    save("variants/metaspace_legacy", tok, SHORT + TORTURE, extra={"patch": legacy_metaspace})

    # Strip normalizer before the SentencePiece-style ones
    tok = sp_tokenizer(sp_vocab_small, sp_merges_small)
    tok.normalizer = normalizers.Sequence([normalizers.Strip(left=True, right=True), normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = sp_decoder()
    save("variants/strip_normalizer", tok, SHORT + TORTURE)

    # normalizer Replace with a regex; unk without byte fallback, fused or not
    for fuse in (False, True):
        tok = sp_tokenizer(sp_vocab_small, sp_merges_small, byte_fallback=False, fuse_unk=fuse)
        tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = sp_decoder()
        save("variants/unk_%s" % ("fused" if fuse else "unfused"), tok, SHORT + TORTURE)

    # continuing_subword_prefix and end_of_word_suffix (no decoder: ids join with spaces)
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+"), behavior="isolated", invert=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>")
    tok.train_from_iterator([small], trainer=trainer)
    save("variants/prefix_suffix", tok, SHORT + TORTURE[:30])

    # ignore_merges where it matters (the library's own unit-test vocabulary)
    vocab = {".:.:": 0, "Ġbelirtilen": 1, ".": 2, ":": 3, "bel": 4, "irtilen": 5, "Ġ": 6, ".:": 7,
             "belirtilen": 8, ".:.": 9, "be": 10, "l": 11, "ir": 12, "ti": 13, "en": 14, "irtil": 15,
             "irti": 16, "i": 17, "r": 18, "t": 19, "b": 20, "e": 21, "n": 22}
    merges = [(".", ":"), ("b", "e"), ("be", "l"), ("i", "r"), ("t", "i"), ("ir", "ti"), ("e", "n"),
              ("irti", "l")]
    strings = [".:.:", "belirtilen", " belirtilen", ".:.:.:", "belirtilen.:.:"]
    for ignore in (False, True):
        tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=ignore))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        save("variants/ignore_merges_%s" % ("on" if ignore else "off"), tok, strings)


def main():
    corpus = read_corpus()
    gpt2like(corpus)
    llama3like(corpus)
    vocab, merges = sp_vocab(corpus, 1000)
    llama2like(corpus, vocab, merges)
    small_vocab, small_merges = sp_vocab(corpus[:200000], 400)
    variants(corpus, small_vocab, small_merges)


if __name__ == "__main__":
    sys.exit(main())
