"""The command line on a user's own model: a file defining it, its data in a file, every output."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import xarray as xr

import vitools as vt
from vitools.cli import main
from vitools.usermodel import load_data, model_arguments

MODEL = textwrap.dedent(
    """
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist


    def model(N, x, y=None):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 5.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        with numpyro.plate("obs", int(N)):  # a size from the data, numpy on the data
            numpyro.sample("y", dist.Normal(alpha + beta * np.asarray(x), sigma), obs=y)


    def broken(N, x, y=None):  # x has N entries, the slope 3: shapes that do not broadcast
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]))
        numpyro.sample("y", dist.Normal(beta * np.asarray(x), 1.0), obs=y)


    def subsampled(N, x, y=None):  # minibatches of 10 of the 30 rows
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 5.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        with numpyro.plate("obs", int(N), subsample_size=10) as index:
            mean = alpha + beta * jnp.asarray(x)[index]
            numpyro.sample("y", dist.Normal(mean, sigma), obs=None if y is None else jnp.asarray(y)[index])


    def stan_style(data):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        numpyro.sample("y", dist.Normal(alpha, 1.0), obs=np.asarray(data["y"]))
    """
)
FAST = ["--num-steps", "200", "--num-draws", "400", "--quiet"]
NUTS = ["--nuts-chains", "1", "--nuts-warmup", "200", "--nuts-draws", "300"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 1.0 + 0.5 * x + rng.normal(scale=0.7, size=30)
    (folder / "data.json").write_text(json.dumps({"N": 30, "x": x.tolist(), "y": y.tolist()}))
    np.savez(folder / "data.npz", N=30, x=x, y=y)
    (folder / "data.csv").write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in zip(x, y, strict=True)))
    return folder


def test_compare_a_user_model_with_nuts_families_json_and_var_names(user, capsys):
    out = user / "report"
    argv = ["compare", f"{user}/my_model.py:model", "--data", f"{user}/data.json", "--reference", "nuts"]
    argv += ["--family", "meanfield,fullrank", "--objectives", "forward_kl_draws"]  # cheap: no density
    argv += ["--var-names", "beta,sigma", "--json", "--out", str(out), *FAST, *NUTS]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)  # stdout is the table alone
    fits = ["forward_kl_draws/meanfield", "forward_kl_draws/fullrank"]
    assert list(rows) == [*fits, "NUTS"]
    assert rows["NUTS"]["w1"] == 0.0 and rows["NUTS"]["rhat"] is None  # one chain: no R-hat
    assert all(rows[name]["w1"] < 0.3 for name in fits)  # a simple regression: every fit is close
    assert "report written" in captured.err and "NUTS reference: 1 chains" in captured.err
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "my_model.py:model" in html and "data.json" in html
    assert "Closest to the reference: <strong>NUTS" not in html  # the reference is not a candidate
    assert (out / "table.csv").exists() and (out / "marginals.png").exists()
    assert '"forward_kl_draws/meanfield"' in captured.out  # JSON keys as written, "/" not escaped
    nuts = xr.open_datatree(out / "nuts.nc")  # kept for the next run's --reference
    assert nuts["posterior"]["beta"].shape == (1, 300)


def test_the_nuts_reference_of_a_subsampled_model_runs_on_all_rows(user, capsys):
    # NUTS cannot draw minibatch indices: it raised NumPyro's "Missing random key to generate
    # subsample indices ... HMC/NUTS do not support subsampling"
    argv = ["compare", f"{user}/my_model.py:subsampled", "--data", f"{user}/data.json", "--reference", "nuts"]
    argv += ["--family", "meanfield", "--objectives", "reverse_kl", "--json", *FAST, *NUTS]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert list(rows) == ["reverse_kl/meanfield", "NUTS"]
    # the fit's minibatch gradients reach the full-data posterior NUTS samples: w1 read 0.11-0.18
    # over seeds 0-4 (measured, these settings); 0.5 leaves room for that noise
    assert rows["reverse_kl/meanfield"]["w1"] < 0.5


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_data_files_reach_the_model(user, suffix):
    data = load_data(user / f"data{suffix}")
    assert np.asarray(data["x"]).shape == (30,)
    if suffix == ".npz":
        assert int(data["N"]) == 30


def test_data_go_as_keywords_or_as_one_dict():
    def keywords(N, x, y=None): ...

    def one_dict(data): ...

    data = {"N": 3, "x": np.zeros(3)}
    assert model_arguments(keywords, data) == ((), data)
    assert model_arguments(one_dict, data) == ((data,), {})
    with pytest.raises(ValueError, match="takes neither the data's entries as keywords"):
        model_arguments(lambda a, b: None, data)


def test_fit_a_user_model_saves_it_and_its_draws_for_the_next_run(user, capsys):
    spec, data = f"{user}/my_model.py:model", f"{user}/data.json"
    saved, draws = user / "fit.vitools.npz", user / "fit.nc"
    assert main(["fit", spec, "--data", data, "--out", str(saved), *FAST]) == 0
    stdout = capsys.readouterr().out
    assert "psis_mean" in stdout and "k̂" in stdout and f"saved: {saved}" in stdout
    # the saved fit loads with the model and data, and draws what it drew
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("reloaded_user_model", user / "my_model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loaded = vt.load(saved, module.model, **load_data(data))
    assert loaded.name == "reverse_kl/fullrank" and loaded.sample(10, seed=1)["beta"].shape == (10,)
    # its draws as a DataTree serve as the next run's reference
    assert main(["fit", spec, "--data", data, "--out", str(draws), *FAST]) == 0
    capsys.readouterr()
    assert main(["fit", spec, "--data", data, "--reference", str(draws), "--csv", *FAST]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].startswith("fit,objective") and "w1" in table[0] and len(table) == 2
    assert (
        "a VI fit's (reverse_kl/fullrank): distances to it are not distances to the posterior" in captured.err
    )


def test_a_stan_style_model_takes_its_data_as_one_dict(user, capsys):
    argv = ["fit", f"{user}/my_model.py:stan_style", "--data", f"{user}/data.json", *FAST]
    assert main(argv) == 0
    assert "alpha" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("my_model.py:nope", "has no function 'nope' (its functions: broken, model, stan_style, subsampled)"),
        ("my_model.py", "MODEL 'my_model.py': name the function too, e.g. my_model.py:model"),
        ("no_such_pkg.mod:model", "importing no_such_pkg.mod failed: ModuleNotFoundError"),
        ("my_model.py:broken", "running it on --data data.json failed: TypeError: "),
    ],
)
def test_a_bad_model_spec_exits_2_naming_it(user, model, message, capsys, monkeypatch):
    monkeypatch.chdir(user)
    assert main(["fit", model, "--data", "data.json", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitools: error: ") and message in err
