"""Every sentence the server says ships in Korean: each `_("...")` in the code is in the Korean
catalogue, translated (not fuzzy), and the compiled catalogue the server loads says the same.
Read from the source and the files: no gettext tools needed."""

import ast
import gettext
import re

from tests.support.processes import PROJECT_DIR

CATALOGUE = PROJECT_DIR / "locale" / "ko" / "LC_MESSAGES"
# The apps' code (migrations hold no sentences for people).
PACKAGES = ("chat", "llmserver", "monitoring")


def unescaped(text: str) -> str:
    """A .po string's text: its C escapes read."""
    return re.sub(r"\\(.)", lambda escape: {"n": "\n", "t": "\t"}.get(escape[1], escape[1]), text)


def catalogue_entries() -> dict[str, tuple[str, bool]]:
    """msgid -> (msgstr, fuzzy) of the Korean .po file."""
    entries = {}
    for block in (CATALOGUE / "django.po").read_text().split("\n\n"):
        match = re.search(r'^msgid ((?:".*"\n)+)msgstr ((?:".*"\n?)+)', block + "\n", re.MULTILINE)
        if match:
            msgid = unescaped("".join(re.findall(r'"(.*)"', match.group(1))))
            msgstr = unescaped("".join(re.findall(r'"(.*)"', match.group(2))))
            entries[msgid] = (msgstr, "#, fuzzy" in block or ", fuzzy" in block)
    return entries


def sentences_in_code() -> set[str]:
    """The literal strings given to `_` (gettext, gettext_lazy) anywhere in the apps."""
    found = set()
    for package in PACKAGES:
        for path in (PROJECT_DIR / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_"
                        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    found.add(node.args[0].value)
    return found


def test_every_sentence_in_the_code_is_in_the_korean_catalogue_and_translated() -> None:
    entries = catalogue_entries()

    missing = sorted(sentence for sentence in sentences_in_code() if sentence not in entries)
    untranslated = sorted(msgid for msgid, (msgstr, fuzzy) in entries.items() if msgid and (not msgstr or fuzzy))

    assert not missing, "run `manage.py makemessages -l ko` and translate"
    assert not untranslated


def test_the_compiled_catalogue_says_what_the_source_catalogue_says() -> None:
    with (CATALOGUE / "django.mo").open("rb") as compiled:
        translations = gettext.GNUTranslations(compiled)

    stale = [
        msgid for msgid, (msgstr, _fuzzy) in catalogue_entries().items()
        if msgid and translations.gettext(msgid) != msgstr
    ]

    assert not stale, "run `manage.py compilemessages -l ko`"
