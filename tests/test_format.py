import pytest
import torch
from conftest import devices, random_2to4

from sparse_llm import Sparse24Weight
from sparse_llm.format import meta_indices, pack_2to4_reference, unpack_2to4_reference
from sparse_llm.ops.pack import pack_2to4_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 16), (3, 48), (37, 80), (64, 1040), (129, 16)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_bit_exact(shape, dtype, device):
    w = random_2to4(*shape, dtype=dtype, device=device)
    packed = Sparse24Weight.from_dense(w)
    assert packed.values.shape == (shape[0], shape[1] // 2) and packed.values.dtype == dtype
    assert packed.meta.shape == (shape[0], shape[1] // 16) and packed.meta.dtype == torch.int16
    assert packed.shape == shape
    dense = packed.to_dense()
    assert dense.dtype == dtype and dense.device == w.device
    assert torch.equal(dense, w)
    # Bit-exact on every non-zero (a pruned -0.0 may come back as +0.0, which compares equal).
    nonzero = w != 0
    int_type = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
    assert torch.equal(dense.view(int_type)[nonzero], w.view(int_type)[nonzero])


def test_golden_metadata_layout():
    # Groups [a,b,0,0], [0,0,c,d], [0,e,0,f], [g,0,0,0] -> nibbles 0x4, 0xE, 0xD, 0x4 (g kept with filler 1).
    w = torch.tensor([[1.0, 2.0, 0, 0, 0, 0, 3.0, 4.0, 0, 5.0, 0, 6.0, 7.0, 0, 0, 0]])
    packed = Sparse24Weight.from_dense(w)
    word = int(packed.meta[0, 0]) & 0xFFFF
    assert word & 0xFF == 0xE4
    assert word == 0x4DE4
    assert packed.values.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0]]


def test_filler_rule_lowest_zero_positions():
    w = torch.zeros(1, 16)
    w[0, 3] = 1.0  # group 0: only index 3 -> (0, 3)
    w[0, 5] = 2.0  # group 1: only index 1 -> (0, 1)
    # groups 2, 3: empty -> (0, 1)
    low, high = meta_indices(Sparse24Weight.from_dense(w).meta)
    assert low.tolist() == [[0, 0, 0, 0]] and high.tolist() == [[3, 1, 1, 1]]


def test_negative_int16_words_round_trip():
    w = torch.zeros(2, 16)
    w[:, 14:16] = 1.0  # last group (2, 3) -> top nibble 0xE: the int16 is negative
    packed = Sparse24Weight.from_dense(w)
    assert int(packed.meta[0, 0]) < 0
    assert torch.equal(packed.to_dense(), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 32), (17, 64), (33, 1056)])
def test_triton_packer_matches_reference_bit_exactly(shape, dtype):
    w = random_2to4(*shape, dtype=dtype)
    values, meta = pack_2to4_triton(w)
    ref_values, ref_meta = pack_2to4_reference(w)
    assert torch.equal(meta, ref_meta)
    assert torch.equal(values.view(torch.uint8), ref_values.view(torch.uint8))


@pytest.mark.parametrize("pack", [pack_2to4_reference, pack_2to4_triton], ids=["torch", "triton"])
def test_more_than_two_nonzeros_raises_naming_row_and_column(pack):
    w = random_2to4(9, 48)
    w[6, 20:24] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    w[7, 0:4] = 1.0
    with pytest.raises(ValueError, match=r"row 6, columns 20\.\.23 hold 3 non-zeros"):
        pack(w)


@pytest.mark.parametrize(
    ("w", "error", "match"),
    [
        (torch.zeros(4, 24), ValueError, "multiple of 16"),
        (torch.zeros(2, 4, 16), ValueError, "2-D"),
        (torch.zeros(16), ValueError, "2-D"),
        (torch.zeros(4, 16, dtype=torch.float64), TypeError, "unsupported dtype"),
        (torch.zeros(4, 16, dtype=torch.int32), TypeError, "unsupported dtype"),
    ],
)
def test_bad_inputs_raise_clearly(w, error, match):
    with pytest.raises(error, match=match):
        Sparse24Weight.from_dense(w)


def test_corrupt_metadata_is_rejected():
    packed = Sparse24Weight.from_dense(random_2to4(4, 32))
    meta = packed.meta.clone()
    meta[2, 1] = 0x0005  # group 0 of that word: indices (1, 1)
    with pytest.raises(ValueError, match="corrupt 2:4 metadata at row 2"):
        Sparse24Weight(packed.values, meta)
    with pytest.raises(ValueError, match="do not describe one"):
        Sparse24Weight(packed.values[:, :8], packed.meta)
    with pytest.raises(TypeError, match="int16"):
        Sparse24Weight(packed.values, packed.meta.to(torch.int32))


def test_to_casts_values_only():
    packed = Sparse24Weight.from_dense(random_2to4(4, 32))
    half = packed.to(torch.float16)
    assert half.values.dtype == torch.float16 and half.meta.dtype == torch.int16
    assert torch.equal(half.to_dense(), packed.to_dense().half())


def test_unpack_reference_is_inverse_of_pack():
    w = random_2to4(11, 64, dtype=torch.bfloat16)
    assert torch.equal(unpack_2to4_reference(*pack_2to4_reference(w)), w)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 80), (1000, 4112)])
def test_cuda_triton_packer_matches_cpu_reference(shape, dtype):
    w = random_2to4(*shape, dtype=dtype)
    packed = Sparse24Weight.from_dense(w.cuda())  # the Triton kernel on CUDA
    ref_values, ref_meta = pack_2to4_reference(w)
    assert torch.equal(packed.meta.cpu(), ref_meta)
    assert torch.equal(packed.values.cpu().view(torch.uint8), ref_values.view(torch.uint8))
    bad = w.clone()
    bad[shape[0] - 1, 8:12] = 1.0
    with pytest.raises(ValueError, match=rf"row {shape[0] - 1}, columns 8\.\.11 hold 4 non-zeros"):
        Sparse24Weight.from_dense(bad.cuda())
