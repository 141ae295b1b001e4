"""Continual-learning metrics: hand-computed matrices, limiting cases, properties and input checks."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import examples
from memnet.continual import (accuracy_matrix, average_accuracy, average_forgetting, backward_transfer,
                              forgetting, forward_transfer, learning_curve, max_drop, summarize)

approx = pytest.approx

# R[i, j] = accuracy on task j after training on tasks 0..i
R2 = [[0.9, 0.3],
      [0.6, 0.8]]
B2 = [0.1, 0.2]

R3 = [[0.80, 0.1, 0.2],
      [0.95, 0.9, 0.3],
      [0.60, 0.4, 0.7]]
B3 = [0.1, 0.1, 0.1]


def test_2x2_by_hand():
    # ACC = (0.6 + 0.8) / 2 = 0.7
    assert average_accuracy(R2) == approx(0.7)
    # BWT = R[1,0] - R[0,0] = 0.6 - 0.9 = -0.3
    assert backward_transfer(R2) == approx(-0.3)
    # FWT = R[0,1] - b[1] = 0.3 - 0.2 = 0.1
    assert forward_transfer(R2, B2) == approx(0.1)
    # f_0 = max(R[0,0]) - R[1,0] = 0.9 - 0.6 = 0.3
    np.testing.assert_allclose(forgetting(R2), [0.3])
    assert average_forgetting(R2) == approx(0.3)
    assert max_drop(R2) == approx(0.3)


def test_3x3_by_hand():
    # ACC = (0.6 + 0.4 + 0.7) / 3 = 1.7 / 3
    assert average_accuracy(R3) == approx(1.7 / 3)
    # BWT = ((0.6 - 0.8) + (0.4 - 0.9)) / 2 = (-0.2 - 0.5) / 2 = -0.35
    assert backward_transfer(R3) == approx(-0.35)
    # FWT = ((R[0,1] - b[1]) + (R[1,2] - b[2])) / 2 = ((0.1 - 0.1) + (0.3 - 0.1)) / 2 = 0.1
    assert forward_transfer(R3, B3) == approx(0.1)
    # f_0 = max(0.80, 0.95) - 0.6 = 0.35 (the peak is after task 1, not on the diagonal)
    # f_1 = max(0.1, 0.9) - 0.4 = 0.5
    np.testing.assert_allclose(forgetting(R3), [0.35, 0.5])
    # F = (0.35 + 0.5) / 2 = 0.425  (> -BWT = 0.35 because of the later peak on task 0)
    assert average_forgetting(R3) == approx(0.425)
    assert max_drop(R3) == approx(0.5)
    # column 1: zero-shot 0.1 after task 0, 0.9 just after training, 0.4 at the end
    np.testing.assert_allclose(learning_curve(R3, 1), [0.1, 0.9, 0.4])


def test_summarize():
    s = summarize(R3, B3)
    assert set(s) == {"acc", "bwt", "fwt", "forgetting"}
    assert s["acc"] == approx(1.7 / 3)
    assert s["bwt"] == approx(-0.35)
    assert s["fwt"] == approx(0.1)
    assert s["forgetting"] == approx(0.425)
    assert summarize(R3)["fwt"] is None
    assert all(isinstance(v, float) for v in s.values())


def test_forgetting_max_includes_zero_shot_rows():
    # Chaudhry et al.: max over all rows l < T-1, including l < j (zero-shot)
    # column 1: zero-shot 0.9, trained 0.6, final 0.5 -> f_1 = 0.9 - 0.5 = 0.4; f_0 = 0.7 - 0.7 = 0
    R = [[0.7, 0.9, 0.0],
         [0.7, 0.6, 0.0],
         [0.7, 0.5, 0.8]]
    np.testing.assert_allclose(forgetting(R), [0.0, 0.4])


def test_improvement_gives_positive_bwt_and_negative_forgetting():
    # BWT = 0.7 - 0.5 = 0.2; f_0 = 0.5 - 0.7 = -0.2
    R = [[0.5, 0.0],
         [0.7, 0.9]]
    assert backward_transfer(R) == approx(0.2)
    np.testing.assert_allclose(forgetting(R), [-0.2])
    assert max_drop(R) == approx(-0.2)


def test_perfect_retention():
    # each task keeps its just-trained accuracy; zero-shot entries are 0
    R = [[0.9, 0.0, 0.0, 0.0],
         [0.9, 0.7, 0.0, 0.0],
         [0.9, 0.7, 0.8, 0.0],
         [0.9, 0.7, 0.8, 0.6]]
    assert backward_transfer(R) == 0.0
    np.testing.assert_array_equal(forgetting(R), [0.0, 0.0, 0.0])
    assert average_forgetting(R) == 0.0
    assert max_drop(R) == 0.0
    assert average_accuracy(R) == approx(3.0 / 4)  # (0.9 + 0.7 + 0.8 + 0.6) / 4


def test_catastrophic_forgetting():
    # final row is 0 on every earlier task: BWT = -(0.9 + 0.7) / 2 = -0.8, f = diagonal
    R = [[0.9, 0.0, 0.0],
         [0.0, 0.7, 0.0],
         [0.0, 0.0, 0.8]]
    assert backward_transfer(R) == approx(-0.8)
    np.testing.assert_allclose(forgetting(R), [0.9, 0.7])
    assert average_forgetting(R) == approx(0.8)
    assert max_drop(R) == approx(0.9)
    assert average_accuracy(R) == approx(0.8 / 3)


def test_single_task():
    R = [[0.75]]
    assert average_accuracy(R) == 0.75
    assert backward_transfer(R) == 0.0
    assert forward_transfer(R, [0.1]) == 0.0
    assert forgetting(R).shape == (0,)
    assert average_forgetting(R) == 0.0
    assert max_drop(R) == 0.0
    assert summarize(R, [0.1]) == {"acc": 0.75, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}


def test_accuracy_matrix_returns_float_copy():
    a = np.array([[1, 0], [0, 1]])
    R = accuracy_matrix(a)
    assert R.dtype == np.float64 and R.shape == (2, 2)
    R[0, 0] = 0.5
    assert a[0, 0] == 1
    c = learning_curve(a, 0)
    c[0] = 0.0
    assert a[0, 0] == 1


unit = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def matrices(draw):
    T = draw(st.integers(1, 6))
    return np.array(draw(st.lists(unit, min_size=T * T, max_size=T * T))).reshape(T, T)


@settings(max_examples=examples(50))
@given(R=matrices())
def test_properties_of_any_matrix(R):
    T = R.shape[0]
    f = forgetting(R)
    assert f.shape == (T - 1,)
    # the max over l < T-1 includes l = j, so f_j >= R[j,j] - R[T-1,j] and hence F >= -BWT
    idx = np.arange(T - 1)
    assert np.all(f >= R[idx, idx] - R[-1, idx] - 1e-12)
    assert average_forgetting(R) >= -backward_transfer(R) - 1e-12
    assert max_drop(R) >= average_forgetting(R) - 1e-12
    assert 0.0 <= average_accuracy(R) <= 1.0
    assert -1.0 <= backward_transfer(R) <= 1.0
    assert -1.0 <= forward_transfer(R, np.zeros(T)) <= 1.0
    for j in range(T):
        np.testing.assert_array_equal(learning_curve(R, j), R[:, j])


@settings(max_examples=examples(25))
@given(v=st.lists(unit, min_size=1, max_size=6))
def test_constant_columns_mean_no_transfer_back(v):
    R = np.tile(v, (len(v), 1))  # every column constant down the stream
    assert backward_transfer(R) == 0.0
    np.testing.assert_array_equal(forgetting(R), np.zeros(len(v) - 1))
    assert average_forgetting(R) == 0.0
    assert max_drop(R) == 0.0
    assert average_accuracy(R) == approx(np.mean(v))


R_NAME = r"\bR\b"


@pytest.mark.parametrize("bad, why", [
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], "square"),
    ([0.5, 0.5], "square"),
    ([[[0.5]]], "square"),
    (np.zeros((0, 0)), "at least one"),
    ([[0.5, float("nan")], [0.5, 0.5]], "finite"),
    ([[0.5, float("inf")], [0.5, 0.5]], "finite"),
    ([[0.5, 1.5], [0.5, 0.5]], r"\[0, 1\]"),
    ([[0.5, -0.1], [0.5, 0.5]], r"\[0, 1\]"),
    ([[90.0, 50.0], [80.0, 95.0]], r"\[0, 1\]"),  # percentages, not fractions
    ([[0.5, "x"], [0.5, 0.5]], "numeric"),
    ([[0.5, 0.5], [0.5]], "numeric"),  # ragged
])
def test_bad_matrix_raises_naming_R(bad, why):
    with pytest.raises(ValueError, match=R_NAME) as e:
        accuracy_matrix(bad)
    assert e.match(why)


@pytest.mark.parametrize("fn", [
    average_accuracy, backward_transfer, forgetting, average_forgetting, max_drop, summarize,
    lambda R: forward_transfer(R, [0.1, 0.1]), lambda R: learning_curve(R, 0),
])
def test_every_metric_validates_R(fn):
    with pytest.raises(ValueError, match=R_NAME):
        fn([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=R_NAME):
        fn([[0.5, float("nan")], [0.5, 0.5]])


@pytest.mark.parametrize("bad", [[0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [[0.1, 0.1, 0.1]], [0.1, 2.0, 0.1],
                                 [0.1, float("nan"), 0.1]])
def test_bad_baseline_raises_naming_baseline(bad):
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R3, bad)
    with pytest.raises(ValueError, match="baseline"):
        summarize(R3, bad)


@pytest.mark.parametrize("j", [-1, 3, 1.0, True])
def test_bad_task_index_raises_naming_j(j):
    with pytest.raises(ValueError, match=r"\bj\b"):
        learning_curve(R3, j)
