"""SharePoint Online scan rules, one test group per real-world failure case."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import pytest

from spmt_tui.engine import rules
from spmt_tui.engine.rules import (
    MAX_FILE_SIZE,
    MAX_PATH_LENGTH,
    Outcome,
    ScanRules,
    ScanSettings,
    check_item,
    parse_extension_list,
)

LIBRARY = "/sites/s1/Shared Documents"  # 26 characters
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
WHEN_TS = WHEN.timestamp()


class Entry(NamedTuple):
    name: str
    is_folder: bool = False
    size: int = 10
    created_ts: float | None = WHEN_TS
    modified_ts: float | None = WHEN_TS
    hidden: bool = False
    symlink: bool = False


def check(name: str, *, folder: bool = False, parents: tuple[str, ...] = (), char: str | None = None,
          prefix: str = LIBRARY, **fields: object) -> tuple[rules.RuleResult, str]:
    settings = ScanSettings(replacement_char=char, **fields)  # type: ignore[arg-type]
    return check_item(parents + (name,), folder, 10, WHEN, WHEN, False, False, prefix, settings)


def path_of_length(total: int, name_tail: str) -> tuple[str, ...]:
    """Return parts whose server-relative path under LIBRARY has exactly ``total`` characters."""
    remaining = total - len(LIBRARY) - 1 - len(name_tail) - 1  # minus separators
    parts = []
    while remaining > 0:
        chunk = min(remaining - 1, 99) if remaining > 100 else remaining
        if chunk <= 0:
            break
        parts.append("d" * chunk)
        remaining -= chunk + 1
    parts.append("x" * (remaining + 1) + name_tail if remaining > -1 else name_tail)
    return tuple(parts)


# -- CASE-01: path length ---------------------------------------------------------------------


@pytest.mark.parametrize("length, passes", [(399, True), (400, True), (401, False)])
def test_path_length_limit(length: int, passes: bool) -> None:
    parts = path_of_length(length, ".txt")
    url = LIBRARY + "/" + "/".join(parts)
    assert len(url) == length
    result, _ = check_item(parts, False, 1, WHEN, WHEN, False, False, LIBRARY)
    if passes:
        assert result.outcome is Outcome.PASS
    else:
        assert result.outcome is Outcome.FAIL
        assert result.code == "0x0111000B"
        assert str(length) in result.message
        assert str(MAX_PATH_LENGTH) in result.message


def test_path_length_counts_decoded_spaces() -> None:
    parts = path_of_length(395, "s p a c e.txt")
    url = LIBRARY + "/" + "/".join(parts)
    assert len(url.replace(" ", "%20")) > 400
    result, _ = check_item(parts, False, 1, WHEN, WHEN, False, False, LIBRARY)
    assert result.outcome is Outcome.PASS


def test_path_length_counts_utf16_units() -> None:
    emoji_name = "\U0001F600" * 190 + ".txt"  # 380 UTF-16 units, 194 code points
    result, _ = check(emoji_name)
    assert result.outcome is Outcome.FAIL
    assert result.code == "0x0111000B"


def test_deep_tree_flags_only_deep_items() -> None:
    scan = ScanRules(LIBRARY)
    parent: tuple[str, ...] = ()
    outcomes = []
    for _ in range(250):
        outcomes.append(scan.evaluate_directory(parent, [Entry("a", is_folder=True)])[0])
        parent = parent + ("a",)
    file_result = scan.evaluate_directory(parent, [Entry("f.txt")])[0]
    first_fail = next(index for index, result in enumerate(outcomes) if result.outcome is Outcome.FAIL)
    assert outcomes[first_fail].code == "0x0111000B"
    assert all(result.code == "0x0111000F" for result in outcomes[first_fail + 1 :])
    assert file_result.code == "0x0111000F"
    top_failed = "/".join(["a"] * (first_fail + 1))
    assert f"'{top_failed}'" in file_result.message


# -- CASE-02: invalid parent folder -----------------------------------------------------------


def test_invalid_parent_children_fail_with_parent_code() -> None:
    scan = ScanRules(LIBRARY)
    top = scan.evaluate_directory((), [Entry(" Minutes", True), Entry("Agenda", True)])
    assert top[0].outcome is Outcome.FAIL
    assert top[0].code == rules.CODE_LEADING_TRAILING_SPACE
    assert top[1].outcome is Outcome.PASS
    children = scan.evaluate_directory((" Minutes",), [Entry("a.txt"), Entry("b.txt")])
    for result in children:
        assert result.outcome is Outcome.FAIL
        assert result.code == "0x0111000F"
        assert "' Minutes'" in result.message
    assert scan.evaluate_directory(("Agenda",), [Entry("c.txt")])[0].outcome is Outcome.PASS


def test_invalid_parent_renamed_children_follow() -> None:
    scan = ScanRules(LIBRARY, ScanSettings(replacement_char="_"))
    top = scan.evaluate_directory((), [Entry(" Minutes", True), Entry("Minutes", True)])
    # The valid "Minutes" keeps its name, the trimmed one collides and gets a suffix.
    assert top[1] is rules.PASSED
    assert top[0].new_name == "Minutes (1)"
    child = scan.evaluate_directory((" Minutes",), [Entry("a.txt")])[0]
    assert child.outcome is Outcome.PASS
    assert scan.destination_path((" Minutes",), "a.txt", child) == "Minutes (1)/a.txt"


def test_grandchildren_name_top_failed_folder() -> None:
    scan = ScanRules(LIBRARY)
    scan.evaluate_directory((), [Entry("bad?", True)])
    scan.evaluate_directory(("bad?",), [Entry("inner", True)])
    result = scan.evaluate_directory(("bad?", "inner"), [Entry("deep.txt")])[0]
    assert result.code == "0x0111000F"
    assert "'bad?'" in result.message


# -- CASE-03: invalid characters --------------------------------------------------------------

INVALID_NAMES = {
    'a"b.txt': "a_b.txt",
    "c*d.txt": "c_d.txt",
    "e:f.txt": "e_f.txt",
    "g<h>.txt": "g_h_.txt",
    "i?j.txt": "i_j.txt",
    "k|l.txt": "k_l.txt",
    "m\\n.txt": "m_n.txt",
    "tab\there.txt": "tab_here.txt",
    "del\x7f.txt": "del_.txt",
}


@pytest.mark.parametrize("name, renamed", INVALID_NAMES.items())
def test_invalid_characters_replaced(name: str, renamed: str) -> None:
    result, destination = check(name, char="_")
    assert result.outcome is Outcome.PASS
    assert result.new_name == renamed
    assert destination == renamed
    assert result.code == "0x01110010"
    assert name in result.message
    assert renamed in result.message


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_characters_fail_without_replacement(name: str) -> None:
    result, _ = check(name)
    assert result.outcome is Outcome.FAIL
    assert result.code == "0x01110010"
    assert "replacement character" in result.message


def test_ok_name_passes_unchanged() -> None:
    result, destination = check("ok.txt")
    assert result is rules.PASSED
    assert destination == "ok.txt"


def test_stress_folder_bad_files_never_pass() -> None:
    scan = ScanRules(LIBRARY)
    entries = [Entry(f"bad?{index:03d}.txt") for index in range(150)]
    entries += [Entry(f"good{index:02d}.txt") for index in range(10)]
    entries.sort(key=lambda entry: entry.name)
    results = scan.evaluate_directory((), entries)
    passed = [entry.name for entry, result in zip(entries, results) if result.outcome is Outcome.PASS]
    assert sorted(passed) == [f"good{index:02d}.txt" for index in range(10)]


def test_replacement_collisions_get_suffixes() -> None:
    scan = ScanRules(LIBRARY, ScanSettings(replacement_char="_"))
    entries = [Entry("a*b.txt"), Entry("a?b.txt"), Entry("a_b.txt")]
    results = scan.evaluate_directory((), entries)
    assert results[2] is rules.PASSED  # the name that needs no change keeps it
    assert results[0].new_name == "a_b (1).txt"
    assert results[1].new_name == "a_b (2).txt"


def test_replacement_char_must_be_valid() -> None:
    for char in ("?", " ", ".", "~", "ab", "\x01"):
        with pytest.raises(ValueError, match="replacement character"):
            ScanSettings(replacement_char=char)


# -- CASE-04: spaces --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [" report.docx", "report.docx "])
def test_ascii_spaces_flagged(name: str) -> None:
    result, _ = check(name)
    assert result.outcome is Outcome.FAIL
    assert result.code == rules.CODE_LEADING_TRAILING_SPACE
    renamed, _ = check(name, char="_")
    assert renamed.new_name == "report.docx"


@pytest.mark.parametrize("name", ["\u3000memo.txt", "report .docx"])
def test_legal_space_forms_pass(name: str) -> None:
    result, _ = check(name)
    assert result is rules.PASSED


def test_trailing_space_folder_children() -> None:
    result, _ = check("d.txt", parents=("Drafts ",))
    assert result.code == "0x0111000F"
    renamed, destination = check("d.txt", parents=("Drafts ",), char="_")
    assert renamed.outcome is Outcome.PASS
    assert destination == "Drafts/d.txt"


# -- CASE-05: trailing dots -------------------------------------------------------------------


def test_trailing_dots() -> None:
    assert check("notes.")[0].code == rules.CODE_TRAILING_DOT
    assert check("v1.", folder=True)[0].code == rules.CODE_TRAILING_DOT
    assert check("v1.2")[0] is rules.PASSED
    child, _ = check("x.jpg", parents=("Images..",))
    assert child.code == "0x0111000F"
    renamed, destination = check("x.jpg", parents=("Images..",), char="_")
    assert destination == "Images/x.jpg"
    assert renamed.outcome is Outcome.PASS


# -- CASE-06: reserved names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CON", "con.txt", "NUL.tar.gz", "COM1.dat", "LPT0.log", "AUX.", "prn"])
def test_device_names_flagged(name: str) -> None:
    result, _ = check(name)
    assert result.outcome is Outcome.FAIL
    assert rules.CODE_RESERVED_NAME in [finding.code for finding in result.findings]


def test_device_names_renamed_with_char() -> None:
    assert check("CON", char="_")[0].new_name == "CON_"
    assert check("NUL.tar.gz", char="_")[0].new_name == "NUL_.tar.gz"
    assert check("AUX.", char="_")[0].new_name == "AUX_"


@pytest.mark.parametrize("name", ["CONTRACT.txt", "console.log", "COM10.txt", "my.lock.txt"])
def test_reserved_name_controls_pass(name: str) -> None:
    assert check(name)[0] is rules.PASSED


def test_lock_file_fails_even_with_char() -> None:
    result, _ = check(".lock", char="_")
    assert result.outcome is Outcome.FAIL
    assert result.code == rules.CODE_RESERVED_NAME


def test_desktop_ini_and_owner_files_skipped() -> None:
    desktop, _ = check("desktop.ini", char="_")
    assert desktop.outcome is Outcome.SKIP
    assert desktop.code == rules.CODE_SYSTEM_FILE
    owner, _ = check("~$budget.xlsx")
    assert owner.outcome is Outcome.SKIP
    assert "temporary Office owner" in owner.message


def test_tilde_folder() -> None:
    folder, _ = check("~tmp", folder=True)
    assert folder.code == rules.CODE_TILDE_FOLDER
    child, _ = check("t.txt", parents=("~tmp",))
    assert child.code == "0x0111000F"
    renamed, destination = check("t.txt", parents=("~tmp",), char="_")
    assert destination == "_tmp/t.txt"
    assert check("~notes.txt")[0] is rules.PASSED  # the tilde rule is for folders only


# -- CASE-07: _vti_ ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cacti_vti_export.xml", "a_VtI_b.txt"])
def test_vti_flagged_any_case(name: str) -> None:
    assert check(name)[0].code == rules.CODE_VTI_IN_NAME
    assert "_vti-" in check(name, char="_")[0].new_name.lower()


def test_vti_folder_and_control() -> None:
    child, destination = check("z.txt", parents=("x_vti_y",), char="_")
    assert destination == "x_vti-y/z.txt"
    assert check("vti.txt")[0] is rules.PASSED


# -- CASE-08: names differing only in case ----------------------------------------------------


def test_case_collision_without_char_fails_later_names() -> None:
    scan = ScanRules(LIBRARY)
    results = scan.evaluate_directory((), [Entry("A.txt"), Entry("a.txt")])
    assert results[0] is rules.PASSED
    assert results[1].outcome is Outcome.FAIL
    assert results[1].code == rules.CODE_NAME_CONFLICT
    assert "'A.txt'" in results[1].message


def test_case_collision_with_char_renames() -> None:
    scan = ScanRules(LIBRARY, ScanSettings(replacement_char="_"))
    results = scan.evaluate_directory((), [Entry("Docs", True), Entry("a.txt"), Entry("A.txt"), Entry("docs", True)])
    assert results[0] is rules.PASSED
    assert results[2] is rules.PASSED  # "A.txt" sorts before "a.txt" in ordinal order
    assert results[1].new_name == "a (1).txt"
    assert results[3].new_name == "docs (1)"
    child = scan.evaluate_directory(("docs",), [Entry("x.txt")])[0]
    assert scan.destination_path(("docs",), "x.txt", child) == "docs (1)/x.txt"


# -- other name rules -------------------------------------------------------------------------


def test_forms_only_at_library_root() -> None:
    assert check("forms", folder=True)[0].code == rules.CODE_FORMS_AT_ROOT
    assert check("Forms", folder=True)[0].code == rules.CODE_FORMS_AT_ROOT
    assert check("forms", folder=True, parents=("sub",))[0] is rules.PASSED
    assert check("forms.txt")[0] is rules.PASSED
    not_root = check_item(("forms",), True, 0, WHEN, WHEN, False, False, LIBRARY + "/Sub",
                          destination_is_library_root=False)[0]
    assert not_root is rules.PASSED


@pytest.mark.parametrize("name", ["page_files", "Page_File", "x_FILES"])
def test_thicket_folders_fail(name: str) -> None:
    result, _ = check(name, folder=True, char="_")
    assert result.outcome is Outcome.FAIL
    assert result.code == "THICKET_FOLDER_UNSUPPORTED"


def test_thicket_suffix_on_file_passes() -> None:
    assert check("report_files")[0] is rules.PASSED


# -- CASE-11: size ----------------------------------------------------------------------------


def test_file_size_limit() -> None:
    scan = ScanRules(LIBRARY)
    results = scan.evaluate_directory((), [Entry("huge.bin", size=MAX_FILE_SIZE + 1),
                                           Entry("limit.bin", size=MAX_FILE_SIZE)])
    assert results[0].outcome is Outcome.FAIL
    assert results[0].code == "0x0111000A"
    assert str(MAX_FILE_SIZE + 1) in results[0].message
    assert results[1] is rules.PASSED


# -- CASE-17: timestamps ----------------------------------------------------------------------


@pytest.mark.parametrize("moment, passes", [
    (datetime(2021, 3, 28, 1, 30, tzinfo=timezone.utc), True),
    (datetime(1970, 1, 1, tzinfo=timezone.utc), True),
    (datetime(2099, 1, 1, tzinfo=timezone.utc), True),
    (rules.EARLIEST_TIMESTAMP, True),
    (rules.EARLIEST_TIMESTAMP - timedelta(seconds=1), False),
    (rules.LATEST_TIMESTAMP, True),
    (rules.LATEST_TIMESTAMP + timedelta(seconds=1), False),
])
def test_timestamp_range(moment: datetime, passes: bool) -> None:
    result, _ = check_item(("f.txt",), False, 1, WHEN, moment, False, False, LIBRARY)
    if passes:
        assert result is rules.PASSED
    else:
        assert result.code == "0x01110011"
        assert "modified" in result.message


def test_missing_timestamp_fails() -> None:
    scan = ScanRules(LIBRARY)
    result = scan.evaluate_directory((), [Entry("blank.pdf", modified_ts=None)])[0]
    assert result.code == "0x01110011"
    assert "no modified time" in result.message


# -- CASE-20 and filters ----------------------------------------------------------------------


def test_hidden_filter_both_values() -> None:
    entries = [Entry(".DS_Store", hidden=True), Entry(".env", hidden=True), Entry("visible.txt"),
               Entry("desktop.ini", hidden=True)]
    off = ScanRules(LIBRARY, ScanSettings(include_hidden=False)).evaluate_directory((), entries)
    assert [result.outcome for result in off] == [Outcome.SKIP, Outcome.SKIP, Outcome.PASS, Outcome.SKIP]
    assert off[0].category == "FILTERED OUT"
    assert off[0].code == rules.CODE_FILTERED_HIDDEN
    on = ScanRules(LIBRARY, ScanSettings(include_hidden=True)).evaluate_directory((), entries)
    assert [result.outcome for result in on] == [Outcome.PASS, Outcome.PASS, Outcome.PASS, Outcome.SKIP]
    assert on[3].code == rules.CODE_SYSTEM_FILE


def test_hidden_folder_children_skipped() -> None:
    scan = ScanRules(LIBRARY, ScanSettings(include_hidden=False))
    scan.evaluate_directory((), [Entry(".git", True, hidden=True)])
    child = scan.evaluate_directory((".git",), [Entry("config")])[0]
    assert child.outcome is Outcome.SKIP
    assert child.code == "0x0111000F"
    assert child.category == "FILTERED OUT"


def test_date_filters_apply_to_files_only() -> None:
    cutoff = datetime(2024, 1, 1, tzinfo=timezone.utc)
    old = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
    scan = ScanRules(LIBRARY, ScanSettings(modified_after=cutoff, created_after=cutoff))
    results = scan.evaluate_directory((), [
        Entry("new.txt"), Entry("old", True, created_ts=old, modified_ts=old),
        Entry("old.txt", modified_ts=old), Entry("oldcreated.txt", created_ts=old),
    ])
    assert results[0] is rules.PASSED
    assert results[1] is rules.PASSED
    assert results[2].code == rules.CODE_FILTERED_MODIFIED
    assert results[3].code == rules.CODE_FILTERED_CREATED
    assert "2020-01-01" in results[2].message


def test_date_filter_requires_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ScanSettings(created_after=datetime(2024, 1, 1))


def test_extension_filter_last_extension_only() -> None:
    assert parse_extension_list("tmp:.BAK: ") == frozenset({"tmp", "bak"})
    scan = ScanRules(LIBRARY, ScanSettings(skipped_extensions=parse_extension_list("gz:TMP")))
    results = scan.evaluate_directory((), [
        Entry("a.tar.gz"), Entry("b.tar"), Entry("c.tmp"), Entry("gz"), Entry("d.TMP"),
        Entry("folder.tmp", True),
    ])
    outcomes = [result.outcome for result in results]
    assert outcomes == [Outcome.SKIP, Outcome.PASS, Outcome.SKIP, Outcome.PASS, Outcome.SKIP, Outcome.PASS]
    assert results[0].code == rules.CODE_FILTERED_EXTENSION


def test_symlink_skipped_with_reason() -> None:
    result = ScanRules(LIBRARY).evaluate_directory((), [Entry("link", symlink=True)])[0]
    assert result.outcome is Outcome.SKIP
    assert result.code == rules.CODE_SYMLINK
    assert "symbolic link" in result.message


# -- CASE-21: every item accounted for --------------------------------------------------------


def test_every_item_gets_exactly_one_result() -> None:
    long_name = "n" * (MAX_PATH_LENGTH - len(LIBRARY)) + ".txt"
    entries = [Entry(f"ok{index}.txt") for index in range(6)]
    entries += [Entry("bad?.txt"), Entry(long_name), Entry("link", symlink=True),
                Entry(".hidden", hidden=True)]
    scan = ScanRules(LIBRARY, ScanSettings(include_hidden=False))
    results = scan.evaluate_directory((), entries)
    assert len(results) == 10
    counts = {outcome: sum(result.outcome is outcome for result in results) for outcome in Outcome}
    assert counts[Outcome.PASS] == 6
    assert counts[Outcome.FAIL] + counts[Outcome.SKIP] == 4
    assert all(result.code for result in results if result.outcome is not Outcome.PASS)
    assert all(result.message for result in results if result.outcome is not Outcome.PASS)


def test_children_before_parent_rejected() -> None:
    with pytest.raises(KeyError, match="before its children"):
        ScanRules(LIBRARY).evaluate_directory(("never",), [Entry("x")])


def test_unreadable_folder_blocks_children() -> None:
    scan = ScanRules(LIBRARY)
    scan.evaluate_directory((), [Entry("locked", True)])
    result = scan.record_unreadable_folder(("locked",), "PermissionError: Permission denied")
    assert result.code == "0x01110003"
    assert "Permission denied" in result.message


# -- per-row checking of a listing that fails the whole-listing test ---------------------------


class _EveryRowRules(ScanRules):
    """ScanRules that checks every row of a suspect listing one by one (the reference)."""

    def _rows_to_check(self, state, listing):  # type: ignore[no-untyped-def]
        return None


_ODD_NAMES = [
    "a.txt", "A.TXT", "b.txt ", " lead.txt", ".hidden", "con.txt", "CON", "x.tmp", "y.TMP",
    "dir.tmp", "forms", "Forms", "_vti_x", "a_files", "A_Files", "q:colon.txt", "p|ipe",
    "~$owner.docx", "ends.", "desktop.ini", ".lock", "é.txt", "É.TXT", "ſ.txt", "İ.txt",
    "a_b.txt", "a:b.txt", "x" * 380, "y" * 380 + ".tmp",
]


@pytest.mark.parametrize("seed", range(60))
def test_row_subset_matches_every_row_check(seed: int) -> None:
    import random

    generator = random.Random(seed)
    pool = _ODD_NAMES + [f"plain{number}.doc" for number in range(40)] + ["Plain1.DOC", "plain2.doc.tmp"]
    names = generator.sample(pool, generator.randint(1, 40))
    children = []
    for name in names:
        roll = generator.random()
        created_ts: float | None = WHEN_TS
        if 0.03 <= roll < 0.05:
            created_ts = None
        elif roll > 0.95:
            created_ts = WHEN_TS - 10**9  # before the created_after filter
        children.append(Entry(
            name,
            is_folder=generator.random() < 0.3,
            size=MAX_FILE_SIZE + 1 if roll < 0.03 else 10,
            created_ts=created_ts,
            modified_ts=WHEN_TS,
            hidden=name.startswith(".") or 0.05 <= roll < 0.08,
            symlink=0.08 <= roll < 0.1,
        ))
    settings = ScanSettings(
        include_hidden=generator.random() < 0.5,
        created_after=WHEN - timedelta(days=1) if generator.random() < 0.5 else None,
        skipped_extensions=frozenset({"tmp"}) if generator.random() < 0.5 else frozenset(),
        replacement_char="_" if generator.random() < 0.5 else None,
    )
    fast = ScanRules(LIBRARY, settings)
    reference = _EveryRowRules(LIBRARY, settings)

    assert fast.evaluate_directory((), children) == reference.evaluate_directory((), children)
    for child in children:
        if child.is_folder:
            assert fast.folder_state((child.name,)) == reference.folder_state((child.name,)), child.name
