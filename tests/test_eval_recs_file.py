"""Scoring saved recommendation files: CSV and Parquet, ranking rules, and clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from eval import evaluate_recs_file, ranking_metrics

RECS = """user,item,score
a,x,3
a,y,2
a,z,1
a,y,0.5
b,y,5
b,x,4
c,x,9
"""
TRUTH = "user,item\na,y\nb,z\nd,x\na,y\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_rules_and_parquet_equivalence(tmp_path):
    recs, truth = write(tmp_path, "recs.csv", RECS), write(tmp_path, "truth.csv", TRUTH)
    m = evaluate_recs_file(recs, truth, ks=(1, 2))
    with pytest.raises(ValueError, match="positive integers, got 2.9"):
        evaluate_recs_file(recs, truth, ks=(2.9,))  # was read as 2
    # users a, b, d (truth); c has no truth: ignored; d has no recs: zeros; duplicate (a, y) keeps score 2
    # a: x, y, z -> y at rank 2; b: y, x -> z missing
    assert m["hit@1"] == 0.0
    assert m["hit@2"] == pytest.approx(1 / 3)
    assert m["mrr@2"] == pytest.approx((1 / 2) / 3)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["precision@2"] == pytest.approx((1 / 2) / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 3)
    # coverage: items listed for evaluated users {x, y} over the items of both files {x, y, z}
    assert m["coverage@2"] == pytest.approx(2 / 3)
    assert evaluate_recs_file(recs, truth, ks=(2,), n_items=10)["coverage@2"] == pytest.approx(0.2)

    pl.read_csv(recs, infer_schema=False).with_columns(pl.col("score").cast(pl.Float64)).write_parquet(
        tmp_path / "recs.parquet"
    )
    pl.read_csv(truth).write_parquet(tmp_path / "truth.pq")
    assert evaluate_recs_file(tmp_path / "recs.parquet", tmp_path / "truth.pq", ks=(1, 2)) == m


def test_same_metrics_as_ranking_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n_users, n_items, k = 30, 40, 10
    scores = rng.standard_normal((n_users, n_items))
    topk = np.argsort(-scores, axis=1)[:, :k]
    truth = sp.random(n_users, n_items, density=0.1, format="csr", random_state=1)
    truth.data[:] = 1
    has = np.diff(truth.indptr) > 0
    rows = [(f"u{u}", f"i{i}", float(scores[u, i])) for u in range(n_users) for i in range(n_items)]
    pl.DataFrame(rows, schema=["user", "item", "score"], orient="row").write_csv(tmp_path / "r.csv")
    t = truth.tocoo()
    pl.DataFrame({"user": [f"u{u}" for u in t.row], "item": [f"i{i}" for i in t.col]}).write_csv(
        tmp_path / "t.csv"
    )
    got = evaluate_recs_file(tmp_path / "r.csv", tmp_path / "t.csv", ks=(5, 10), n_items=n_items)
    want = ranking_metrics(topk[has], truth[has], ks=(5, 10), n_items=n_items)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_ties_break_by_item_id(tmp_path):
    # every id an integer: numeric order, 9 < 10 (as strings "10" < "9"); all scores tied
    truth = write(tmp_path, "t.csv", "user,item\nu,9\n")
    recs = write(tmp_path, "r.csv", "user,item,score\nu,10,1\nu,9,1\nu,11,1\n")
    assert evaluate_recs_file(recs, truth, ks=(1,))["hit@1"] == 1.0
    # one id is not an integer: string order for all, "10" < "11" < "9" < "b"
    truth = write(tmp_path, "t2.csv", "user,item\nu,9\nv,b\n")
    m = evaluate_recs_file(recs, truth, ks=(1, 3))
    assert m["hit@1"] == 0.0 and m["mrr@3"] == pytest.approx((1 / 3) / 2)


def test_ids_are_strings_whatever_the_file_types(tmp_path):
    pl.DataFrame({"user": [1, 1, 2], "item": [10, 20, 10], "score": [0.2, 0.9, 1]}).write_parquet(
        tmp_path / "r.parquet"
    )
    truth = write(tmp_path, "t.csv", "user,item\n1, 20\n2,10\n")  # whitespace is stripped
    m = evaluate_recs_file(tmp_path / "r.parquet", truth, ks=(1,))
    assert m["hit@1"] == 1.0


@pytest.mark.parametrize(
    "recs_text,match",
    [
        ("user,item\na,x\n", "lacks column.*'score'"),
        ("user,item,score\na,y,1\na,x,high\n", "non-numeric score.*'high', first at line 3"),
        ("user,item,score\na,y,1\na,z,2\na,x,nan\n", "NaN score.*first at line 4"),
        ("user,item,score\na,x,\n", "without a score, first at line 2"),
        ("", "is empty"),
        ("user,item,score\n", "no rows"),
        ("user,item,score\na,x,1\n,x,1\n", "empty 'user', first at line 3"),
    ],
)
def test_recs_errors_name_the_file(tmp_path, recs_text, match):
    recs = write(tmp_path, "bad_recs.csv", recs_text)
    truth = write(tmp_path, "truth.csv", "user,item\na,x\n")
    with pytest.raises(ValueError, match=match) as err:
        evaluate_recs_file(recs, truth, ks=(1,))
    assert "bad_recs.csv" in str(err.value)


def test_truth_and_path_errors(tmp_path):
    recs = write(tmp_path, "recs.csv", "user,item,score\na,x,1\n")
    with pytest.raises(ValueError, match="truth file .*lacks column.*'item'"):
        evaluate_recs_file(recs, write(tmp_path, "t.csv", "user,product\na,x\n"), ks=(1,))
    with pytest.raises(ValueError, match="extension"):
        evaluate_recs_file(recs, write(tmp_path, "t.json", "{}"), ks=(1,))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        evaluate_recs_file(tmp_path / "nope.csv", recs, ks=(1,))
    pl.DataFrame({"user": ["a"], "item": ["x"], "score": ["1"]}).write_parquet(tmp_path / "s.parquet")
    truth = write(tmp_path, "t2.csv", "user,item\na,x\n")
    assert evaluate_recs_file(tmp_path / "s.parquet", truth, ks=(1,))["hit@1"] == 1.0
    pl.DataFrame({"user": ["a"], "item": ["x"], "score": [True]}).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="b.parquet.*score"):
        evaluate_recs_file(tmp_path / "b.parquet", recs, ks=(1,))


def test_equal_integer_ids_rank_in_a_fixed_order(tmp_path):
    # "07" and "7" are the same integer: their tie is broken by their text ("07" first), never at random
    truth = write(tmp_path, "truth.csv", "user,item\n1,7\n")
    for rows in ("1,07,1\n1,7,1\n", "1,7,1\n1,07,1\n"):
        recs = write(tmp_path, "recs.csv", "user,item,score\n" + rows)
        assert evaluate_recs_file(recs, truth, ks=(1, 2))["hit@1"] == 0.0
    # ids beyond 64 bits still compare as integers: 9 ranks before 10**22 on a tie
    recs = write(tmp_path, "big.csv", "user,item,score\n1,10000000000000000000000,1\n1,9,1\n")
    truth = write(tmp_path, "tb.csv", "user,item\n1,9\n")
    assert evaluate_recs_file(recs, truth, ks=(1,))["hit@1"] == 1.0


def test_minus_inf_is_never_recommended(tmp_path):
    recs = write(tmp_path, "recs.csv", "user,item,score\n1,10,0.5\n1,11,-inf\n")
    truth = write(tmp_path, "truth.csv", "user,item\n1,11\n")
    m = evaluate_recs_file(recs, truth, ks=(2,))
    assert m["hit@2"] == 0.0 and m["recall@2"] == 0.0
    # ... but it is an item of the files: 'abc' makes ids compare as strings, so "10" ties ahead of "9"
    # (docs/metrics.md); dropping the -inf row first made every id an integer and put 9 first
    recs = write(tmp_path, "abc.csv", "user,item,score\n1,10,1.0\n1,9,1.0\n1,abc,-inf\n")
    m = evaluate_recs_file(recs, write(tmp_path, "t10.csv", "user,item\n1,10\n"), ks=(1, 3))
    assert m["hit@1"] == 1.0
    assert m["coverage@3"] == pytest.approx(2 / 3)  # 10 and 9 listed, of the files' 3 items


def test_repeated_score_column_and_trailing_blank_line(tmp_path):
    truth = write(tmp_path, "truth.csv", "user,item\n1,11\n")
    recs = write(tmp_path, "recs.csv", "user,item,score,score\n1,10,1,0\n1,11,0,1\n")
    with pytest.raises(
        ValueError, match=r"recs\.csv, line 1, column 'score': expected each column name once"
    ):
        evaluate_recs_file(recs, truth, ks=(1,))
    recs = write(tmp_path, "blank.csv", "user,item,score\n1,11,1\n\n")
    assert evaluate_recs_file(recs, truth, ks=(1,))["hit@1"] == 1.0
    # a row with only an unread field filled is not blank: its empty user is an error, with its line
    recs = write(tmp_path, "note.csv", "user,item,score,note\n1,11,1,\n,,,y\n")
    with pytest.raises(ValueError, match=r"empty 'user', first at line 3"):
        evaluate_recs_file(recs, truth, ks=(1,))


def test_k_beyond_every_list(tmp_path):
    recs, truth = write(tmp_path, "recs.csv", RECS), write(tmp_path, "truth.csv", TRUTH)
    small = evaluate_recs_file(recs, truth, ks=(3,))
    huge = evaluate_recs_file(recs, truth, ks=(3, 10**11))  # would need users x 10**11 slots uncut
    for name in ("recall", "ndcg", "hit", "mrr", "map", "coverage"):
        assert huge[f"{name}@{10**11}"] == pytest.approx(small[f"{name}@3"])
    assert huge[f"precision@{10**11}"] == pytest.approx(small["precision@3"] * 3 / 10**11)
    assert huge["precision@3"] == small["precision@3"]


@pytest.mark.parametrize(
    "text",
    [
        "\n\nuser,item,score\n1,11,1\n1,12,abc\n",  # blank lines before the header
        'user,item,score,why\n1,11,1,"liked\nthe genre"\n\n1,12,abc,x\n',  # a text over lines, a blank line
    ],
)
def test_line_numbers_count_every_line_before_a_row(tmp_path, text):
    truth = write(tmp_path, "truth.csv", "user,item\n1,11\n")
    recs = write(tmp_path, "recs.csv", text)
    with pytest.raises(ValueError, match=r"non-numeric score value\(s\), e\.g\. 'abc', first at line 5"):
        evaluate_recs_file(recs, truth, ks=(1,))


def test_ragged_line_and_old_mac_line_endings(tmp_path):
    truth = write(tmp_path, "truth.csv", "user,item\n1,11\n")
    ragged = write(tmp_path, "ragged.csv", "user,item,score\n1,11,1\n1,12,2,extra\n")
    with pytest.raises(ValueError, match=r"ragged\.csv, line 3: expected at most 3 fields per line"):
        evaluate_recs_file(ragged, truth, ks=(1,))
    mac = tmp_path / "mac.csv"
    mac.write_bytes(b"user,item,score\r1,11,1\r")
    with pytest.raises(
        ValueError, match=r"mac\.csv, line 1: expected lines ending in .*old Mac line endings"
    ):
        evaluate_recs_file(mac, truth, ks=(1,))


def test_a_quoted_id_running_over_lines_is_refused(tmp_path):
    # the quote swallowed the next line into one id: the row of u2 vanished and hit@1 read 0 without a word
    truth = write(tmp_path, "truth.csv", "user,item\nu1,5\nu2,2\n")
    recs = write(tmp_path, "recs.csv", 'user,item,score\nu1,"5,1.0\nu2,2",0.5\nu2,3,0.1\n')
    with pytest.raises(ValueError, match=r"recs\.csv, line 2: column 'item' holds a line break"):
        evaluate_recs_file(recs, truth, ks=(1,))
    quoted_truth = write(tmp_path, "qt.csv", 'user,item\n"u\n1",5\nu2,2\n')
    with pytest.raises(ValueError, match=r"qt\.csv, line 2: column 'user' holds a line break"):
        evaluate_recs_file(write(tmp_path, "ok.csv", "user,item,score\nu1,5,1\n"), quoted_truth, ks=(1,))


def test_a_multi_line_field_in_a_column_not_read_is_fine(tmp_path):
    # free text over lines in another column (pandas writes it so) is read (its line numbers: above)
    truth = write(tmp_path, "truth.csv", "user,item\nu1,5\nu2,2\n")
    recs = write(tmp_path, "recs.csv", 'user,item,score,why\nu1,5,1.0,"liked\nthe genre"\nu2,2,0.5,x\n')
    assert evaluate_recs_file(recs, truth, ks=(1,))["hit@1"] == 1.0


def test_signed_integer_ids_beyond_64_bits_rank_as_integers(tmp_path):
    truth = write(tmp_path, "truth.csv", "user,item\nu1,9\n")
    rows = "u1,10,1.0\nu1,9,1.0\nu1,-1,0\nu1,99999999999999999999,0\n"
    recs = write(tmp_path, "recs.csv", "user,item,score\n" + rows)
    assert evaluate_recs_file(recs, truth, ks=(1,))["hit@1"] == 1.0  # string order put 10 first
    # the order, by value then text, of signed ids of any size
    from eval.recs_file import _item_codes

    ids = ["-12", "3", "-3", "+3", "03", "0", "-0", "-" + "9" * 30, "1" + "0" * 5000, "-" + "1" * 5000]
    order = _item_codes(pl.Series(ids))["item"].to_list()
    assert order == [
        "-" + "1" * 5000,
        "-" + "9" * 30,
        "-12",
        "-3",
        "-0",
        "0",
        "+3",
        "03",
        "3",
        "1" + "0" * 5000,
    ]


def test_n_items_must_be_a_catalogue_that_holds_the_lists(tmp_path):
    recs = write(tmp_path, "recs.csv", "user,item,score\nu1,1,2\nu1,2,1\n")
    truth = write(tmp_path, "truth.csv", "user,item\nu1,1\n")
    with pytest.raises(ValueError, match="n_items=1 is smaller than the 2 distinct items"):
        evaluate_recs_file(recs, truth, ks=(2,), n_items=1)  # was coverage@2 = 2.0
    for bad in (1.9, True, "5"):
        with pytest.raises(ValueError, match="n_items must be an integer"):
            evaluate_recs_file(recs, truth, ks=(2,), n_items=bad)  # 1.9 was read as 1
    assert evaluate_recs_file(recs, truth, ks=(2,), n_items=np.int64(4))["coverage@2"] == 0.5


def test_files_whose_users_do_not_meet_are_refused_and_missing_lists_are_counted(tmp_path):
    truth = write(tmp_path, "truth.csv", TRUTH)
    # the user ids of another encoding (positions instead of names): every metric would be a silent zero
    other = write(tmp_path, "other.csv", "user,item,score\n0,x,1\n1,y,1\n")
    with pytest.raises(
        ValueError, match=r"none of the 3 users of .*truth\.csv.*same user ids.*\['a', 'b', 'd'\]"
    ):
        evaluate_recs_file(other, truth, ks=(1,))
    recs = write(tmp_path, "recs.csv", RECS)
    with pytest.warns(UserWarning, match=r"1 of the 3 users of .*truth\.csv have no recommendation"):
        evaluate_recs_file(recs, truth, ks=(1,))
    # -inf means "not recommended": users whose every row is -inf have no list, and a file of only such rows
    # is refused for what it is (it was scored as all zeros without a word)
    unranked = write(tmp_path, "unranked.csv", "user,item,score\na,y,-inf\nb,z,-inf\n")
    with pytest.raises(ValueError, match=r"no user of .*truth\.csv has a recommendation .* scored -inf"):
        evaluate_recs_file(unranked, truth, ks=(1,))
    partly = write(tmp_path, "partly.csv", "user,item,score\na,y,1\nb,z,-inf\nd,x,1\n")
    with pytest.warns(UserWarning, match=r"1 of the 3 users of .*truth\.csv have no recommendation"):
        evaluate_recs_file(partly, truth, ks=(1,))
