"""hopt_cli.space: the unit-cube encoding policies work in, and validation of a recipe's `space`."""
from __future__ import annotations

import numpy as np
import pytest

from hopt_cli.errors import HoptError, RecipeError
from hopt_cli.space import SearchSpace

SPEC = {
    "lr": {"type": "log", "low": 1.0e-4, "high": 1.0, "init": [1.0e-3, 1.0e-1]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.8, "init": [0.1, 0.3]},
    "layers": {"type": "int", "low": 1, "high": 8},
    "batch_size": {"type": "int", "low": 16, "high": 256, "log": True, "init": [32, 64]},
    "augment": {"type": "choice", "values": ["none", "shift", "shift+noise"], "init": ["none", "shift"]},
}

# Coordinates far outside the unit cube, on its bounds, and inside it.
EXTREME_COORDS = (-5.0, -1.0, -1e-12, 0.0, 1.0, 1.0 + 1e-12, 2.0, 5.0, 1e6, -1e6)


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_recipe(SPEC)


def _key_error(spec: object) -> str:
    with pytest.raises(RecipeError) as info:
        SearchSpace.from_recipe(spec)
    assert isinstance(info.value, HoptError)
    assert info.value.key in str(info.value)
    return info.value.key


# --- encode / decode --------------------------------------------------------------------------------

def test_names_and_dimension_follow_the_recipe_order(space):
    assert space.names == ("lr", "dropout", "layers", "batch_size", "augment")
    assert space.dim == 5
    assert list(space.choice_mask) == [False, False, False, False, True]


def test_float_round_trip_is_linear(space):
    p = space.param("dropout")
    assert p.encode(0.0) == 0.0
    assert p.encode(0.8) == pytest.approx(1.0)
    assert p.encode(0.4) == pytest.approx(0.5)
    assert p.decode(0.25) == pytest.approx(0.2)
    for value in np.linspace(0.0, 0.8, 41):
        assert p.decode(p.encode(value)) == pytest.approx(value, abs=1e-12)


def test_log_round_trip_is_on_the_log_scale(space):
    p = space.param("lr")
    assert p.decode(0.5) == pytest.approx(1e-2, rel=1e-12)
    assert p.decode(0.25) == pytest.approx(1e-3, rel=1e-12)
    assert p.decode(0.0) == pytest.approx(1e-4, rel=1e-12)
    assert p.decode(1.0) == pytest.approx(1.0, rel=1e-12)
    assert p.encode(1e-2) == pytest.approx(0.5)
    for value in np.logspace(-4, 0, 33):
        assert p.decode(p.encode(value)) == pytest.approx(value, rel=1e-9)


def test_int_decodes_by_rounding_and_stays_int(space):
    p = space.param("layers")  # linear over [1, 8]: 7 units
    for value in range(1, 9):
        decoded = p.decode(p.encode(value))
        assert decoded == value and type(decoded) is int
    assert p.decode(1.4 / 7) == 2  # 2.4 rounds down
    assert p.decode(1.6 / 7) == 3  # 2.6 rounds up
    for u in np.linspace(-0.5, 1.5, 201):
        assert type(p.decode(u)) is int


def test_int_on_the_log_scale(space):
    p = space.param("batch_size")  # [16, 256], log: 4 doublings
    assert p.decode(0.5) == 64
    assert p.decode(0.25) == 32
    assert type(p.decode(0.5)) is int
    for value in range(16, 257):
        decoded = p.decode(p.encode(value))
        assert decoded == value and type(decoded) is int


def test_int_with_whole_float_bounds_decodes_to_int():
    p = SearchSpace.from_recipe({"n": {"type": "int", "low": 2.0, "high": 10.0}}).param("n")
    assert type(p.decode(0.5)) is int
    assert p.decode(0.5) == 6
    assert type(p.low) is int and type(p.high) is int


def test_choice_is_encoded_by_cell(space):
    p = space.param("augment")
    assert [p.encode(v) for v in p.values] == pytest.approx([1 / 6, 1 / 2, 5 / 6])
    for index, value in enumerate(p.values):
        assert p.decode(p.encode(value)) == value
        # every coordinate inside the cell decodes to that cell's value
        for u in np.linspace(index / 3 + 1e-9, (index + 1) / 3 - 1e-9, 7):
            assert p.decode(u) == value
    assert p.decode(1.0) == "shift+noise"
    assert p.decode(0.0) == "none"


def test_choice_values_of_any_plain_type_round_trip():
    space = SearchSpace.from_recipe({"opt": {"type": "choice", "values": [3, "adam", 0.5, None, False]}})
    p = space.param("opt")
    for value in p.values:
        decoded = p.decode(p.encode(value))
        assert decoded == value and type(decoded) is type(value)


def test_choice_values_equal_in_python_are_rejected_or_round_trip():
    """`1` and `true` (or `1` and `1.0`) are distinct YAML values but equal in Python: either validation
    rejects them, or encoding must still find each value's own cell."""
    for values in ([1, True], [1, 1.0], [0, False, "x"]):
        try:
            p = SearchSpace.from_recipe({"flag": {"type": "choice", "values": values}}).param("flag")
        except RecipeError as err:
            assert err.key == "space.flag.values"
            continue
        for value in values:
            decoded = p.decode(p.encode(value))
            assert decoded == value and type(decoded) is type(value), (values, value, decoded)


def test_space_encode_decode_vectors(space):
    hparams = {"lr": 1e-2, "dropout": 0.4, "layers": 5, "batch_size": 64, "augment": "shift"}
    u = space.encode(hparams)
    assert isinstance(u, np.ndarray) and u.shape == (5,)
    assert u == pytest.approx([0.5, 0.5, 4 / 7, 0.5, 0.5])
    decoded = space.decode(u)
    assert decoded["lr"] == pytest.approx(1e-2)
    assert decoded["dropout"] == pytest.approx(0.4)
    assert {k: decoded[k] for k in ("layers", "batch_size", "augment")} == {
        "layers": 5, "batch_size": 64, "augment": "shift"}
    assert space.decode(list(u)) == decoded


def test_decode_never_leaves_the_bounds(space):
    rng = np.random.default_rng(1234)
    coords = np.concatenate([rng.normal(0.5, 3.0, size=(400, space.dim)),
                             rng.uniform(-5, 5, size=(400, space.dim)),
                             rng.choice(EXTREME_COORDS, size=(200, space.dim))])
    for u in coords:
        values = space.decode(u)
        for p in space.params:
            value = values[p.name]
            if p.is_choice:
                assert value in p.values
            else:
                assert p.low <= value <= p.high, (p.name, value)
                if p.kind == "int":
                    assert type(value) is int


def test_decode_clips_onto_the_nearest_bound(space):
    for p in space.params:
        assert p.decode(-5.0) == p.decode(0.0)
        assert p.decode(5.0) == p.decode(1.0)
    assert space.param("lr").decode(-5) == pytest.approx(1e-4)
    assert space.param("lr").decode(5) == pytest.approx(1.0)
    assert space.param("dropout").decode(-5) == 0.0
    assert space.param("dropout").decode(5) == pytest.approx(0.8)
    assert space.param("layers").decode(5) == 8
    assert space.param("batch_size").decode(-5) == 16


def test_log_decode_at_the_top_stays_below_high():
    # exp(log(low) + (log(high) - log(low))) can round above high; it must be clipped
    for low, high in ((1e-7, 0.3), (3e-5, 0.7), (1e-6, 1.0), (0.1, 0.9), (2.0, 7.0)):
        p = SearchSpace.from_recipe({"x": {"type": "log", "low": low, "high": high}}).param("x")
        for u in (0.0, 1.0, 1.5, 100.0, -3.0):
            assert low <= p.decode(u) <= high


# --- sampling ---------------------------------------------------------------------------------------

def test_sample_init_stays_in_the_init_box(space):
    rng = np.random.default_rng(7)
    seen_augment = set()
    for _ in range(500):
        u = space.sample_init(rng)
        assert u.shape == (space.dim,)
        assert np.all((u >= 0.0) & (u <= 1.0))
        values = space.decode(u)
        assert 1e-3 * (1 - 1e-9) <= values["lr"] <= 1e-1 * (1 + 1e-9)
        assert 0.1 - 1e-12 <= values["dropout"] <= 0.3 + 1e-12
        assert 1 <= values["layers"] <= 8  # no init: the whole range
        assert 32 <= values["batch_size"] <= 64
        assert values["augment"] in ("none", "shift")
        seen_augment.add(values["augment"])
    assert seen_augment == {"none", "shift"}


def test_sample_init_without_init_box_covers_the_range(space):
    p = space.param("layers")
    assert p.init_box() == (0.0, 1.0)
    rng = np.random.default_rng(3)
    values = {p.decode(p.sample_init(rng)) for _ in range(500)}
    assert values == set(range(1, 9))


def test_init_box_is_the_encoded_init(space):
    lo, hi = space.param("lr").init_box()
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.75)
    lo, hi = space.param("dropout").init_box()
    assert lo == pytest.approx(0.125) and hi == pytest.approx(0.375)


def test_sample_uniform_covers_the_whole_range(space):
    rng = np.random.default_rng(11)
    u = np.array([space.sample_uniform(rng) for _ in range(2000)])
    assert np.all((u >= 0.0) & (u <= 1.0))
    numeric = ~space.choice_mask
    assert np.all(u[:, numeric].min(axis=0) < 0.02)
    assert np.all(u[:, numeric].max(axis=0) > 0.98)
    lrs = [space.decode(row)["lr"] for row in u]
    assert min(lrs) < 1e-3 and max(lrs) > 1e-1  # leaves the init box on both sides
    augment = {space.decode(row)["augment"] for row in u}
    assert augment == {"none", "shift", "shift+noise"}  # init values do not restrict it
    choice_coords = set(np.round(u[:, 4], 12))
    assert choice_coords == set(np.round([1 / 6, 1 / 2, 5 / 6], 12))


def test_sampling_is_deterministic_for_a_seed(space):
    a = [space.sample_init(np.random.default_rng(5)) for _ in range(3)]
    assert all(np.array_equal(a[0], x) for x in a)
    assert not np.array_equal(space.sample_init(np.random.default_rng(5)),
                              space.sample_init(np.random.default_rng(6)))


# --- validation -------------------------------------------------------------------------------------

def test_numeric_strings_are_accepted():
    space = SearchSpace.from_recipe({
        "lr": {"type": "log", "low": "1e-4", "high": "1", "init": ["1e-3", "1e-1"]},
        "wd": {"type": "float", "low": "0", "high": "2.5e-1"},
    })
    lr = space.param("lr")
    assert lr.low == pytest.approx(1e-4) and lr.high == pytest.approx(1.0)
    assert lr.init == pytest.approx((1e-3, 1e-1))
    assert lr.decode(0.5) == pytest.approx(1e-2)
    assert space.param("wd").high == pytest.approx(0.25)


def test_to_recipe_round_trips(space):
    again = SearchSpace.from_recipe(space.to_recipe())
    assert again == space
    assert again.to_recipe() == space.to_recipe()


@pytest.mark.parametrize("spec, key", [
    (None, "space"),
    ({}, "space"),
    ([{"type": "float"}], "space"),
    ({"x": {"type": "float", "low": 1.0, "high": 1.0}}, "space.x"),
    ({"x": {"type": "float", "low": 2.0, "high": 1.0}}, "space.x"),
    ({"x": {"type": "log", "low": 0.0, "high": 1.0}}, "space.x.low"),
    ({"x": {"type": "log", "low": -1.0, "high": 1.0}}, "space.x.low"),
    ({"x": {"type": "int", "low": 0, "high": 64, "log": True}}, "space.x.low"),
    ({"x": {"type": "choice", "values": []}}, "space.x.values"),
    ({"x": {"type": "choice"}}, "space.x.values"),
    ({"x": {"type": "choice", "values": "abc"}}, "space.x.values"),
    ({"x": {"type": "choice", "values": ["a", "a"]}}, "space.x.values"),
    ({"x": {"type": "choice", "values": ["a", "b"], "init": ["c"]}}, "space.x.init"),
    ({"x": {"type": "float", "low": 0, "high": 1, "scale": 2}}, "space.x.scale"),
    ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, "space.x.log"),
    ({"x": {"type": "choice", "values": ["a"], "low": 0}}, "space.x.low"),
    ({"x": {"type": "float", "low": "abc", "high": 1}}, "space.x.low"),
    ({"x": {"type": "float", "low": 0, "high": [1]}}, "space.x.high"),
    ({"x": {"type": "float", "low": True, "high": 2}}, "space.x.low"),
    ({"x": {"type": "float", "low": 0, "high": "inf"}}, "space.x.high"),
    ({"x": {"type": "float", "low": "nan", "high": 1}}, "space.x.low"),
    ({"x": {"type": "float", "high": 1}}, "space.x.low"),
    ({"x": {"type": "float", "low": 0}}, "space.x.high"),
    ({"x": {"type": "float", "low": 0, "high": 1, "init": [0.5, 2.0]}}, "space.x.init"),
    ({"x": {"type": "float", "low": 0, "high": 1, "init": [-0.1, 0.5]}}, "space.x.init"),
    ({"x": {"type": "float", "low": 0, "high": 1, "init": [0.6, 0.5]}}, "space.x.init"),
    ({"x": {"type": "float", "low": 0, "high": 1, "init": [0.5]}}, "space.x.init"),
    ({"x": {"type": "log", "low": 1e-4, "high": 1, "init": [1e-5, 1e-3]}}, "space.x.init"),
    ({"x": {"type": "int", "low": 0.5, "high": 4}}, "space.x"),
    ({"x": {"type": "int", "low": 1, "high": 4.5}}, "space.x"),
    ({"x": {"type": "int", "low": 1, "high": 4, "log": "yes"}}, "space.x.log"),
    ({"x": {"type": "gaussian", "low": 0, "high": 1}}, "space.x.type"),
    ({"x": {"low": 0, "high": 1}}, "space.x.type"),
    ({"x": 0.5}, "space.x"),
    ({"bad-name": {"type": "float", "low": 0, "high": 1}}, "space.bad-name"),
])
def test_invalid_specs_name_their_key(spec, key):
    assert _key_error(spec) == key


def test_first_bad_entry_is_named_among_good_ones():
    spec = {"lr": {"type": "log", "low": 1e-4, "high": 1.0},
            "momentum": {"type": "float", "low": 0.9, "high": 0.5}}
    assert _key_error(spec) == "space.momentum"


def test_error_message_is_one_line_and_names_the_key():
    with pytest.raises(RecipeError) as info:
        SearchSpace.from_recipe({"lr": {"type": "log", "low": 0, "high": 1}})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("space.lr.low")
