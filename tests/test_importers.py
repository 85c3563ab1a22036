import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayeslr.cli import main
from bayeslr.datasets import marin_csv
from bayeslr.errors import BayesLRError, ImportCSVError
from bayeslr.importers import read_sweep_csv
from bayeslr.store import SweepStore

HEADER = "model_params,tokens,batch_size,optimizer,lr,loss"


def write(tmp_path, text, name="sweep.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_marin_sweep_imports_losslessly(tmp_path):
    store_dir = tmp_path / "x"
    assert main(["import", str(marin_csv()), "--into", str(store_dir)]) == 0
    assert len(list(store_dir.glob("*.json"))) == 271
    frame = SweepStore(store_dir).to_frame()
    assert len(frame) == 271 and frame["diverged"].sum() == 39
    assert sorted(frame["optimizer"].unique()) == ["adamw", "lion", "muon", "nadamw"]
    with marin_csv().open() as handle:
        source = list(csv.DictReader(handle))
    header = source[0].keys()
    kept = {c.split(".", 1)[-1] for c in frame.columns}
    renamed = {"model_params", "hidden_size", "ffn_hidden_size", "warmup", "train_steps",
               "optimizer", "loss", "diverged"}
    assert set(header) - renamed <= kept

    def key(opt, lr, loss, batch, tokens):
        loss = round(float(loss), 9) if loss not in ("", None) and loss == loss else -1.0
        return (opt, float(lr), loss, int(float(batch)), float(tokens))

    from_csv = sorted(key(r["optimizer"], r["lr"], r["loss"] if r["loss"] != "nan" else None,
                          r["batch_size"], r["tokens"]) for r in source)
    stored = sorted(key(r.optimizer, r.lr, r.final_val_loss, r.batch_size, r.tokens)
                    for r in frame.itertuples())
    assert stored == from_csv
    assert frame.loc[frame["meta.loss_text"].notna(), "diverged"].all()


def test_reimport_is_idempotent(tmp_path):
    store_dir = tmp_path / "x"
    path = write(tmp_path, f"{HEADER}\n1e6,1e8,32,adamw,0.001,3.2\n1e6,1e8,32,adamw,0.004,3.1\n")
    main(["import", str(path), "--into", str(store_dir)])
    main(["import", str(path), "--into", str(store_dir)])
    assert len(SweepStore(store_dir)) == 2


@pytest.mark.parametrize("text, message", [
    ("model_params,tokens,batch_size,optimizer\n1e6,1e8,32,adamw\n",
     r"missing required .*lr.*loss"),
    (f"{HEADER}\n1e6,1e8,32,adamw,-0.001,3.0\n", r"line 2: .*optimizer.lr"),
    (f"{HEADER}\n1e6,1e8,32,adamw,nan,3.0\n", r"line 2: field 'lr'"),
    (f"{HEADER}\n1e6,1e8,32,adamx,0.001,3.0\n", r"line 2: .*unknown optimizer 'adamx'"),
    (f"{HEADER}\n1e6,1e8,32.5,adamw,0.001,3.0\n", r"line 2: field 'batch_size'"),
    (f"{HEADER}\n1e6,1e8,32,adamw,0.001\n", r"line 2: expected 6 fields"),
    (f"{HEADER}\n1e6,1e8,32,adamw,0.001,3.0\n1e6,1e8,32,adamw,0.001,3.1\n", "same configuration"),
    ("", "empty file"),
    (f"{HEADER}\n", "no data rows"),
])
def test_bad_csv_fails_clearly_and_leaves_store_unchanged(tmp_path, text, message):
    store_dir = tmp_path / "x"
    good = write(tmp_path, f"{HEADER}\n1e6,1e8,32,adamw,0.002,3.0\n", "good.csv")
    main(["import", str(good), "--into", str(store_dir)])
    before = {p.name: p.read_bytes() for p in store_dir.iterdir()}
    path = write(tmp_path, text)
    with pytest.raises(ImportCSVError, match=message):
        read_sweep_csv(path)
    assert main(["import", str(path), "--into", str(store_dir)]) == 1
    assert {p.name: p.read_bytes() for p in store_dir.iterdir()} == before


def test_nonfinite_and_text_losses_mark_divergence(tmp_path):
    path = write(tmp_path, f"{HEADER},diverged\n1e6,1e8,32,sgd,0.1,>10,0\n"
                 "1e6,1e8,32,sgd,0.2,inf,\n1e6,1e8,32,sgd,0.05,3.3,0\n")
    records = read_sweep_csv(path)
    assert [r.outcome.diverged for r in records] == [True, True, False]


def test_key_columns_make_rows_distinct(tmp_path):
    text = f"{HEADER},tag\n1e6,1e8,32,adamw,0.001,3.0,a\n1e6,1e8,32,adamw,0.001,3.1,b\n"
    path = write(tmp_path, text)
    with pytest.raises(ImportCSVError, match="--key-columns"):
        read_sweep_csv(path)
    assert len({r.run_id for r in read_sweep_csv(path, key_columns=["tag"])}) == 2


cells = st.one_of(st.text(max_size=8), st.floats(allow_nan=True).map(repr),
                  st.integers(-5, 10**9).map(str), st.sampled_from(["adamw", "sgd", "", ">10"]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(HEADER.split(",") + ["diverged", "beta1", "x", "seed"]),
                       min_size=0, max_size=8),
       rows=st.lists(st.lists(cells, min_size=0, max_size=9), max_size=4))
def test_loading_never_crashes_with_a_foreign_error(tmp_path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path = write(tmp_path, buffer.getvalue(), "fuzz.csv")
    try:
        read_sweep_csv(path)
    except BayesLRError:
        pass


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_reading_a_run_file_never_crashes_with_a_foreign_error(tmp_path, text):
    store = SweepStore(tmp_path / "s")
    (store.root / "0123456789abcdef.json").write_text(text)
    try:
        list(store.records())
    except BayesLRError:
        pass
