"""`<lora:...>` tags, prompt tidying and trigger words (lora_space.generate.prompts)."""

from __future__ import annotations

import time

import pytest

from lora_space.core.errors import PromptError
from lora_space.generate.prompts import (
    build_model_prompt,
    find_tags,
    insert_trigger_words,
    parse_prompt,
)


def test_course_examples_parse_to_names_and_strengths():
    parsed = parse_prompt("Portrait of a woman in a garden <lora:watercolor_style:0.8> <lora:detailed_eyes:0.6>")
    assert parsed.text == "Portrait of a woman in a garden"
    assert [(tag.name, tag.strength) for tag in parsed.tags] == [("watercolor_style", 0.8), ("detailed_eyes", 0.6)]
    first = parsed.tags[0]
    assert parsed.raw[first.span[0] : first.span[1]] == first.source_text == "<lora:watercolor_style:0.8>"


@pytest.mark.parametrize(
    ("tag", "name", "strength"),
    [
        ("<lora:style>", "style", 1.0),
        ("<lora:style:1>", "style", 1.0),
        ("<lora:style:.5>", "style", 0.5),
        ("<lora:style:-0.5>", "style", -0.5),
        ("<lora:style:3>", "style", 3.0),
        ("<lora:style:-2>", "style", -2.0),
        ("<LORA:style:0.8>", "style", 0.8),
        ("< lora : style : 0.8 >", "style", 0.8),
        ("<lora:user/repo:0.7>", "user/repo", 0.7),
        ("<lora:user/my-repo.v2/sub/file_1.safetensors:0.7>", "user/my-repo.v2/sub/file_1.safetensors", 0.7),
        ("<lora:Detail Tweaker (v2):1e-1>", "Detail Tweaker (v2)", 0.1),
        ("<lora:styles/watercolor>", "styles/watercolor", 1.0),
    ],
)
def test_tag_grammar(tag, name, strength):
    (parsed,) = parse_prompt(f"a cat {tag}").tags
    assert (parsed.name, parsed.strength) == (name, strength)


@pytest.mark.parametrize(
    ("prompt", "quoted", "hint"),
    [
        ("a cat <lora:>", "<lora:>", "has no LoRA name"),
        ("a cat <lora>", "<lora>", "has no LoRA name"),
        ("a cat <lora::0.5>", "<lora::0.5>", "has no LoRA name"),
        ("a cat <lora:name:abc>", "<lora:name:abc>", "not a number"),
        ("a cat <lora:name:inf>", "<lora:name:inf>", "not a number"),
        ("a cat <lora:name:>", "<lora:name:>", "not a number"),
        ("a cat <lora:name:0.8", "<lora:name:0.8", "not closed"),
        ("a <lora:name:0.8 and <lora:b:1>", "<lora:name:0.8 and", "not closed"),
        ("a <lora:name:0.8\nmore", "<lora:name:0.8", "not closed"),
        ("a <lora:name:3.5>", "<lora:name:3.5>", "outside -2 to 3"),
        ("a <lora:name:-2.01>", "<lora:name:-2.01>", "outside -2 to 3"),
        ("a <lora:name:1:0.5>", "<lora:name:1:0.5>", "more than one ':'"),
        ("a <lora:../secret:1>", "<lora:../secret:1>", "'..'"),
        ("a <lora:/etc/passwd>", "<lora:/etc/passwd>", "leading '/'"),
        ('a <lora:bad"name>', '<lora:bad"name>', "cannot hold"),
    ],
)
def test_malformed_tags_quote_the_tag_and_say_how_to_fix(prompt, quoted, hint):
    with pytest.raises(PromptError) as caught:
        parse_prompt(prompt)
    message = str(caught.value)
    assert f"'{quoted}'" in message
    assert hint in message


def test_same_lora_twice_counts_once_but_two_strengths_is_an_error():
    parsed = parse_prompt("<lora:style:0.8> a cat <lora:Style:0.8>")
    assert [tag.name for tag in parsed.tags] == ["style"]
    assert parsed.text == "a cat"
    with pytest.raises(PromptError) as caught:
        parse_prompt("<lora:style:0.8> a cat <lora:style:0.5>")
    assert "'<lora:style:0.8>'" in str(caught.value) and "'<lora:style:0.5>'" in str(caught.value)


def test_prompt_length_limit_says_length_and_limit():
    parse_prompt("x" * 4000)
    with pytest.raises(PromptError, match="4,001 characters long; the limit is 4,000"):
        parse_prompt("x" * 4001)
    with pytest.raises(PromptError, match="the limit is 10"):
        parse_prompt("a" * 11, max_chars=10)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("a, <lora:x:1>, b", "a, b"),
        ("<lora:x:1>, portrait", "portrait"),
        ("portrait, <lora:x:1>", "portrait"),
        ("a photo <lora:x:1>.", "a photo."),
        ("a   photo\n\tof <lora:x:1>  a cat", "a photo of a cat"),
        ("<lora:x:1>", ""),
        ("a cat, 50mm", "a cat, 50mm"),
        ("a <cat> 3 < 4", "a <cat> 3 < 4"),
    ],
)
def test_text_is_tidied(prompt, text):
    assert parse_prompt(prompt).text == text


def test_trigger_words_prepended_once_whole_word_any_case():
    assert insert_trigger_words("portrait of a woman", ["wtrclr"]) == "wtrclr, portrait of a woman"
    assert insert_trigger_words("a WTRCLR portrait", ["wtrclr"]) == "a WTRCLR portrait"
    assert insert_trigger_words("wtrclrs everywhere", ["wtrclr"]) == "wtrclr, wtrclrs everywhere"
    assert insert_trigger_words("a cat", ["tok", "TOK", " ", "in  the style of X"]) == "tok, in the style of X, a cat"
    assert insert_trigger_words("cat in the style\nof x", ["in the style of X"]) == "cat in the style\nof x"
    assert insert_trigger_words("", ["tok"]) == "tok"
    once = insert_trigger_words("a cat", ["tok"])
    assert insert_trigger_words(once, ["tok"]) == once


def test_model_prompt_skips_trigger_words_of_loras_at_zero():
    parsed = parse_prompt("portrait <lora:watercolor_style:0.8> <lora:eyes:0>")
    prompt = build_model_prompt(parsed, [(["wtrclr"], 0.8), (["eyez"], 0.0), (["neg"], -0.5)])
    assert prompt == "wtrclr, neg, portrait"


# -- hostile text (issue 14, hole 1): tags and trigger words from files and cards ---------------


@pytest.mark.timeout(60)
def test_a_strength_of_sixteen_thousand_digits_is_refused_in_linear_time():
    """`\\d+\\.?\\d*` split a run of digits in every way before failing: 4.9 s on 16,000 digits."""
    started = time.perf_counter()
    with pytest.raises(PromptError, match="which is not a number"):
        find_tags("<lora:ink:" + "1" * 16_000 + "x>")
    assert time.perf_counter() - started < 0.5
    assert [tag.strength for tag in find_tags("<lora:a:1.5e-1> <lora:b:.5> <lora:c:-2> <lora:d:3.>")] == [0.15, 0.5, -2.0, 3.0]


@pytest.mark.timeout(60)
def test_thousands_of_trigger_words_from_a_card_cost_milliseconds():
    """Each word was compared with every word before it: 3,000 words took 12.6 s."""
    words = [f"w{index}" for index in range(3000)]
    started = time.perf_counter()
    prompt = insert_trigger_words("a cat", words)
    assert time.perf_counter() - started < 0.5
    assert prompt.startswith("w0, w1, ") and prompt.endswith(", a cat") and prompt.count(",") == 192  # 6 LoRAs x 32 words


def test_trigger_words_are_kept_stripped_short_once_and_at_most_thirty_two():
    from lora_space.hub.cards import MAX_TRIGGER_WORDS, clean_trigger_words

    words = [" ink ", "INK", "", "x" * 201, 7, "sumi-e"] + [f"w{index}" for index in range(100)]
    kept = clean_trigger_words(words)
    assert kept[:3] == ["ink", "sumi-e", "w0"] and len(kept) == MAX_TRIGGER_WORDS
