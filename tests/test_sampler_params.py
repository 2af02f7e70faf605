"""sampler_params: the plain sampler, the file round trip, and every load error by name."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids
from lsd_jax import sampler_params as sp_lib


def test_init_is_the_plain_sampler_and_takes_a_grid():
    p = sp_lib.init(4, 1e-3)
    np.testing.assert_array_equal(p.phi, np.ones(4))
    np.testing.assert_allclose(p.grid(), grids.uniform(4, 1e-3), rtol=1e-6, atol=1e-7)
    g = grids.power(4, 1e-3, 2.0)
    np.testing.assert_allclose(sp_lib.init(4, 1e-3, grid=g).grid(), g, rtol=1e-5, atol=1e-6)
    assert p.nfe == 4 and p.describe()["grid"][0] == 1.0 and p.describe()["grid"][-1] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="grid has 4 times but nfe = 4 needs 5"):
        sp_lib.init(4, 1e-3, grid=grids.uniform(3, 1e-3))
    with pytest.raises(ValueError, match="sampler 'heun-ish' is not supported"):
        sp_lib.init(4, sampler="heun-ish")


def test_save_load_round_trip_is_exact(tmp_path):
    p = sp_lib.init(3, 1e-4, sampler="tweedie", reading="temperature")
    p = p.replace(phi=jnp.asarray([0.5, 1.25, 2.0]), logits=jnp.asarray([0.25, -0.5, 1.0]))
    sp_lib.save(p, str(tmp_path / "x" / "p.json"), meta={"by": "test"})
    q = sp_lib.load(str(tmp_path / "x" / "p.json"))
    np.testing.assert_array_equal(q.phi, p.phi)
    np.testing.assert_array_equal(q.logits, p.logits)
    assert (q.eps, q.sampler, q.reading) == (1e-4, "tweedie", "temperature")
    assert json.loads((tmp_path / "x" / "p.json").read_text())["meta"] == {"by": "test"}
    sp_lib.save(p, str(tmp_path / "sampler_params.json"))
    np.testing.assert_array_equal(sp_lib.load(str(tmp_path)).phi, p.phi)  # a directory: its sampler_params.json


@pytest.mark.parametrize("change,needle", [
    ({"format": "other/1"}, "key 'format' must be"),
    ({"phi": None}, "missing field 'phi'"),
    ({"eps": None}, "missing field 'eps'"),
    ({"phi": [1.0, 1.0]}, "'phi' and 'logits' must have equal length"),
    ({"phi": [1.0, float("nan"), 1.0]}, "key 'phi' has non-finite entries at \\[1\\]"),
    ({"sampler": "rk4"}, "sampler 'rk4' is not supported"),
    ({"reading": "log"}, "reading 'log' is not supported"),
])
def test_load_errors_name_the_field(tmp_path, change, needle):
    path = tmp_path / "p.json"
    sp_lib.save(sp_lib.init(3), str(path))
    doc = json.loads(path.read_text())
    for k, v in change.items():
        if v is None:
            del doc[k]
        else:
            doc[k] = v
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=needle):
        sp_lib.load(str(path))


def test_load_missing_and_not_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="sampler params file not found"):
        sp_lib.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        sp_lib.load(str(tmp_path / "bad.json"))
