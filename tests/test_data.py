"""Catalog and pair-file reading: good input parses, each kind of bad input names file/row/column."""

import subprocess
import sys

import pytest

from epm_edge.data import load_pair_set, read_catalog
from epm_edge.data.csvfile import read_csv
from epm_edge.errors import InputError


def write(tmp_path, name, content, mode="w"):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_reads_real_catalog_and_splits(data_dir):
    ps = load_pair_set(data_dir / "abt_buy")
    assert len(ps.a) == 1081 and len(ps.b) == 1092
    valid = ps.split("valid")
    assert len(valid) == 1916 and int(valid.labels.sum()) == 206
    assert ps.available_splits() == ["train", "valid", "test"]
    wdc = load_pair_set(data_dir / "wdc_products").split("train")
    assert wdc.hard_negative.any() and not wdc.labels[wdc.hard_negative].any()
    # eval --skip: a window after the pairs a threshold was tuned on
    window = valid.head(5, skip=200)
    assert window.a_ids == valid.a_ids[200:205] and list(window.labels) == list(valid.labels[200:205])
    assert len(valid.head(None, skip=1900)) == 16


def test_id_column_auto_detected_and_columns_selected(tmp_path):
    p = write(tmp_path, "c.csv", "title,sku,price\nfoo,S1,1\nbar,S2,\n")
    cat = read_catalog(p)
    assert cat.id_col == "sku" and cat.columns == ["title", "price"]
    assert cat.records["S2"] == {"title": "bar", "price": ""}
    only = read_catalog(p, columns=["title"])
    assert only.records["S1"] == {"title": "foo"}


@pytest.mark.parametrize("content, expect", [
    ("", "file is empty"),
    ("   \n\n", "file is empty"),
    ("title,price\nfoo,1\n", "no id column found"),
    ("id,title\n1,foo\n2,bar\n1,baz\n", "row 4, column 'id': duplicate id '1' (first seen at row 2)"),
    ("id,title\n1,foo\n2,bar,extra\n", "row 3: has 3 fields, header has 2"),
    ("id,title\n1,\"unterminated\n", "malformed CSV"),
    ("id,title\n", "has a header but no records"),
    ("id,title\n,foo\n", "row 2, column 'id': empty id"),
    # rows are records: a field spanning lines is one row
    ('id,title\n1,"x\ny\nz"\n2,ok\n3,bad,extra\n', "row 4: has 3 fields, header has 2"),
    ('id,title\n1,"x\ny"\n2,"bad"x\n', "row 3: malformed CSV"),
    ('id,title\n1,"x\ny"\n2,"never closed\nmore\n', "row 3: malformed CSV"),
    ('id,title\n1,"x\ny"\n1,z\n', "row 3, column 'id': duplicate id '1' (first seen at row 2)"),
])
def test_bad_catalogs(tmp_path, content, expect):
    p = write(tmp_path, "bad.csv", content)
    with pytest.raises(InputError) as e:
        read_catalog(p)
    assert str(p) in str(e.value) and expect in str(e.value)


def test_undecodable_bytes_named_with_row(tmp_path):
    p = write(tmp_path, "latin1.csv", "id,title\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.csv, row 3: not valid UTF-8"):
        read_catalog(p)


def test_missing_file_and_unknown_columns(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_catalog(tmp_path / "nope.csv")
    p = write(tmp_path, "c.csv", "id,title\n1,foo\n")
    with pytest.raises(InputError, match="column 'sku': id column not in header"):
        read_catalog(p, id_col="sku")
    with pytest.raises(InputError, match="column 'brand': column not in header"):
        read_catalog(p, columns=["brand"])


def test_pair_file_errors(tmp_path):
    write(tmp_path, "tableA.csv", "id,title\na1,foo\n")
    write(tmp_path, "tableB.csv", "id,title\nb1,bar\n")
    ps = load_pair_set(tmp_path)
    write(tmp_path, "test.csv", "ltable_id,rtable_id,label\na1,b1,1\na1,b9,0\n")
    with pytest.raises(InputError, match=r"test.csv, row 3, column 'rtable_id': id 'b9' is not in tableB.csv"):
        ps.split("test")
    write(tmp_path, "valid.csv", "ltable_id,rtable_id\na1,b1\n")
    with pytest.raises(InputError, match=r"valid.csv, row 1, column 'label': required column missing"):
        ps.split("valid")
    write(tmp_path, "train.csv", "ltable_id,rtable_id,label\na1,b1,yes\n")
    with pytest.raises(InputError, match=r"row 2, column 'label': label must be 0 or 1"):
        ps.split("train")
    with pytest.raises(InputError, match="data directory not found"):
        load_pair_set(tmp_path / "missing")


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    empty = write(tmp_path, "empty.csv", "")
    good = write(tmp_path, "good.csv", "id,title\n1,foo\n")
    r = subprocess.run([sys.executable, "-m", "epm_edge", "match", str(empty), str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {empty}: file is empty"]
    assert "Traceback" not in r.stderr


# Characters that str.splitlines() treats as line breaks but CSV does not: only \r, \n and \r\n end a record.
@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x0c", "\x0b", "\x85", "\x1c", "\x1d", "\x1e"])
def test_unicode_line_separators_stay_inside_fields(tmp_path, sep):
    p = write(tmp_path, "c.csv", f'id,title\n1,a{sep}b\n2,"c{sep}d"\n3,e\n')
    header, rows = read_csv(p)
    assert header == ["id", "title"]
    assert rows == [(2, {"id": "1", "title": f"a{sep}b"}), (3, {"id": "2", "title": f"c{sep}d"}),
                    (4, {"id": "3", "title": "e"})]


def test_row_numbers_are_records_after_multiline_field(tmp_path):
    # a blank row still counts as a row (a spreadsheet shows it), but is not returned
    p = write(tmp_path, "c.csv", '\ufeffid,title\n1,"line one\nline two\nline three"\n\n2,ok\n')
    header, rows = read_csv(p)
    assert header == ["id", "title"]
    assert rows == [(2, {"id": "1", "title": "line one\nline two\nline three"}), (4, {"id": "2", "title": "ok"})]


def test_bare_cr_ends_records_but_not_quoted_fields(tmp_path):
    p = write(tmp_path, "c.csv", 'id,title\r1,"a\rb"\r2,c\r\n3,d')
    assert read_csv(p)[1] == [(2, {"id": "1", "title": "a\rb"}), (3, {"id": "2", "title": "c"}),
                              (4, {"id": "3", "title": "d"})]


def test_undecodable_bytes_after_multiline_field_name_the_record(tmp_path):
    p = write(tmp_path, "latin1.csv", 'id,title\n1,"x\ny"\n2,"caf\xe9\nz"\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.csv, row 3: not valid UTF-8"):
        read_catalog(p)


def test_undecodable_bytes_after_bom_name_the_file_offset_and_record(tmp_path):
    # utf-8-sig counts positions after the BOM; the message must count them in the file
    p = write(tmp_path, "bom.csv", b"\xef\xbb\xbfid,title\n1,ok\n\xe9,bad\n")
    with pytest.raises(InputError, match=r"bom.csv, row 3: not valid UTF-8 \(byte 0xe9 at offset 17\)"):
        read_catalog(p)
