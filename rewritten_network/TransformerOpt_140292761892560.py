import sys
import mindspore
from mindspore import nn
from mindspore.nn import Cell
from mindspore.ops import functional as F
#
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/function')
from mindspore.ops.operations.array_ops import Tril
from mindspore.ops._primitive_cache import _get_cache_prim
from mindspore.ops.auto_generate import diagonal
from mindspore.ops.function.array_func import Tril as Tril_1

def tril_opt(input, diagonal=0):
    _get_cache_prim_var = _get_cache_prim(Tril_1)
    tril_ = _get_cache_prim_var(diagonal)
    tril__var = tril_(input)
    return tril__var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_prim import *
from mindspore.ops.auto_generate.pyboost_inner_prim import *
from mindspore.ops.operations.manually_defined.ops_def import *
from mindspore.ops.auto_generate.gen_ops_def import ones_op

def ones_opt(shape, dtype=None):
    ones_op_var = ones_op(shape, dtype)
    return ones_op_var
#
sys.path.insert(0, '/work/main/model')
import mindspore as ms

def causal_mask(length):
    tuple_var_1 = (length, length)
    ones_var = ones_opt(tuple_var_1, ms.int32)
    tril_var = tril_opt(ones_var)
    keep = tril_var > 0
    reshape_var_1 = keep.reshape(1, 1, length, length)
    return reshape_var_1
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/function')
from mindspore.ops.function.math_func import logical_and_

def logical_and_opt(input, other):
    logical_and__var = logical_and_(input, other)
    return logical_and__var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_def import equal_op

def equal_opt(input, other):
    equal_op_var = equal_op(input, other)
    return equal_op_var
#
sys.path.insert(0, '/work/main/model')

def segment_mask(q_seg, k_seg, causal=False):
    not_equal_var_1 = not_equal_opt(k_seg, 0)
    expand_dims_var_3 = not_equal_var_1.expand_dims(1)
    expand_dims_var_5 = k_seg.expand_dims(1)
    expand_dims_var_4 = q_seg.expand_dims(2)
    equal_var = equal_opt(expand_dims_var_4, expand_dims_var_5)
    same = logical_and_opt(equal_var, expand_dims_var_3)
    if causal:
        subscript_var_1 = q_seg.shape[1]
        subscript_var = q_seg.shape[1]
        subscript_var_2 = q_seg.shape[1]
        causal_mask_var = causal_mask(subscript_var_2)
        reshape_var = causal_mask_var.reshape(1, subscript_var, subscript_var_1)
        same = logical_and_opt(same, reshape_var)
    expand_dims_var_2 = same.expand_dims(1)
    return expand_dims_var_2
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_def import select_op

def select_opt(condition, input, other):
    select_op_var = select_op(condition, input, other)
    return select_op_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_def import zeros_op

def zeros_opt(size, dtype=None):
    zeros_op_var = zeros_op(size, dtype)
    return zeros_op_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/function')
from mindspore.ops.function.array_func import cast_
from mindspore.ops.function.array_func import fillv2_

def fill_opt(type, shape, value):
    value = cast_(value, type)
    fillv2__var = fillv2_(shape, value)
    return fillv2__var
#
sys.path.insert(0, '/work/main/model')

def mask_to_bias(mask, dtype=ms.float32):
    fill_var = fill_opt(dtype, mask.shape, NEG_INF)
    zeros_var = zeros_opt(mask.shape, dtype)
    select_var = select_opt(mask, zeros_var, fill_var)
    return select_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_def import not_equal_op

def not_equal_opt(input, other):
    not_equal_op_var = not_equal_op(input, other)
    return not_equal_op_var
#
sys.path.insert(0, '/work/main/model')

def padding_mask(ids, pad_id):
    not_equal_var = not_equal_opt(ids, pad_id)
    expand_dims_var_1 = not_equal_var.expand_dims(1)
    expand_dims_var = expand_dims_var_1.expand_dims(1)
    return expand_dims_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/auto_generate')
from mindspore.ops.auto_generate.gen_ops_def import Gather

def gather_opt(input_params, input_indices, axis, batch_dims=0):
    _get_cache_prim_var = _get_cache_prim(Gather)
    gather_op = _get_cache_prim_var(batch_dims)
    gather_op_var = gather_op(input_params, input_indices, axis)
    return gather_op_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/ops/function')
from mindspore.ops.auto_generate import relu_op, inplace_relu_op
from mindspore.ops.function.nn_func import inplace_relu_op as inplace_relu_op_1
from mindspore.ops.function.nn_func import relu_op as relu_op_1
from mindspore.train.amp import amp_cast

def relu_opt(input, inplace=False):
    if inplace:
        inplace_relu_op_var = inplace_relu_op_1(input)
        return inplace_relu_op_var
    input = amp_cast(input, mindspore.float16)
    relu_op_var = relu_op_1(input)
    relu_op_var = amp_cast(relu_op_var, mindspore.float32)
    return relu_op_var
#
sys.path.insert(0, '/work/main/model')
from transformer import Logits

class LogitsOpt(Logits, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x, weight):
        x = amp_cast(x, mindspore.float16)
        weight = amp_cast(weight, mindspore.float16)
        matmul_var = self.matmul(x, weight)
        matmul_var = amp_cast(matmul_var, mindspore.float32)
        return matmul_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')
from mindspore import ops
from mindspore.nn.cell import Cell
from mindspore.nn.layer.basic import Dense

class DenseOpt_15(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_14(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')
from feedforward import FeedForward

class FeedForwardOpt_1(FeedForward, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.w1 = DenseOpt_14(self.w1)
        self.dropout = DropoutOpt(self.dropout)
        self.w2 = DenseOpt_15(self.w2)

    def construct(self, x):
        w1_var = self.w1(x)
        relu_var = relu_opt(w1_var)
        dropout_var = self.dropout(relu_var)
        w2_var = self.w2(dropout_var)
        return w2_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_13(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')
from attention import ScaledDotProductAttention

class ScaledDotProductAttentionOpt_2(ScaledDotProductAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.dropout = DropoutOpt(self.dropout)

    def construct(self, q, k, v, bias):
        mult_var = q * self.scale
        mult_var = amp_cast(mult_var, mindspore.float16)
        k = amp_cast(k, mindspore.float16)
        qk_var = self.qk(mult_var, k)
        qk_var = amp_cast(qk_var, mindspore.float32)
        scores = qk_var + bias
        softmax_var = self.softmax(scores)
        weights = self.dropout(softmax_var)
        weights = amp_cast(weights, mindspore.float16)
        v = amp_cast(v, mindspore.float16)
        av_var = self.av(weights, v)
        av_var = amp_cast(av_var, mindspore.float32)
        return av_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_12(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_11(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_10(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')
from attention import MultiHeadAttention

class MultiHeadAttentionOpt_2(MultiHeadAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.w_v = DenseOpt_10(self.w_v)
        self.w_k = DenseOpt_11(self.w_k)
        self.w_q = DenseOpt_12(self.w_q)
        self.attention = ScaledDotProductAttentionOpt_2(self.attention)
        self.w_o = DenseOpt_13(self.w_o)

    def split_heads(self, x):
        b, length, _ = x.shape
        reshape_var = x.reshape(b, length, self.n_heads, self.d_k)
        transpose_var = reshape_var.transpose(0, 2, 1, 3)
        return transpose_var

    def merge_heads(self, x):
        b, _, length, _ = x.shape
        mult_var = self.n_heads * self.d_k
        transpose_var_1 = x.transpose(0, 2, 1, 3)
        reshape_var_1 = transpose_var_1.reshape(b, length, mult_var)
        return reshape_var_1

    def project_kv(self, kv_input):
        w_v_var = self.w_v(kv_input)
        split_heads_var_1 = self.split_heads(w_v_var)
        w_k_var = self.w_k(kv_input)
        split_heads_var = self.split_heads(w_k_var)
        tuple_var = (split_heads_var, split_heads_var_1)
        return tuple_var

    def attend(self, query_input, k, v, bias):
        w_q_var = self.w_q(query_input)
        q = self.split_heads(w_q_var)
        attention_var = self.attention(q, k, v, bias)
        merge_heads_var = self.merge_heads(attention_var)
        w_o_var = self.w_o(merge_heads_var)
        return w_o_var

    def construct(self, query_input, kv_input, bias):
        k, v = self.project_kv(kv_input)
        attend_var = self.attend(query_input, k, v, bias)
        return attend_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_9(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')

class ScaledDotProductAttentionOpt_1(ScaledDotProductAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.dropout = DropoutOpt(self.dropout)

    def construct(self, q, k, v, bias):
        mult_var = q * self.scale
        mult_var = amp_cast(mult_var, mindspore.float16)
        k = amp_cast(k, mindspore.float16)
        qk_var = self.qk(mult_var, k)
        qk_var = amp_cast(qk_var, mindspore.float32)
        scores = qk_var + bias
        softmax_var = self.softmax(scores)
        weights = self.dropout(softmax_var)
        weights = amp_cast(weights, mindspore.float16)
        v = amp_cast(v, mindspore.float16)
        av_var = self.av(weights, v)
        av_var = amp_cast(av_var, mindspore.float32)
        return av_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_8(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_7(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_6(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')

class MultiHeadAttentionOpt_1(MultiHeadAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.w_v = DenseOpt_6(self.w_v)
        self.w_k = DenseOpt_7(self.w_k)
        self.w_q = DenseOpt_8(self.w_q)
        self.attention = ScaledDotProductAttentionOpt_1(self.attention)
        self.w_o = DenseOpt_9(self.w_o)

    def split_heads(self, x):
        b, length, _ = x.shape
        reshape_var = x.reshape(b, length, self.n_heads, self.d_k)
        transpose_var = reshape_var.transpose(0, 2, 1, 3)
        return transpose_var

    def merge_heads(self, x):
        b, _, length, _ = x.shape
        mult_var = self.n_heads * self.d_k
        transpose_var_1 = x.transpose(0, 2, 1, 3)
        reshape_var_1 = transpose_var_1.reshape(b, length, mult_var)
        return reshape_var_1

    def project_kv(self, kv_input):
        w_v_var = self.w_v(kv_input)
        split_heads_var_1 = self.split_heads(w_v_var)
        w_k_var = self.w_k(kv_input)
        split_heads_var = self.split_heads(w_k_var)
        tuple_var = (split_heads_var, split_heads_var_1)
        return tuple_var

    def attend(self, query_input, k, v, bias):
        w_q_var = self.w_q(query_input)
        q = self.split_heads(w_q_var)
        attention_var = self.attention(q, k, v, bias)
        merge_heads_var = self.merge_heads(attention_var)
        w_o_var = self.w_o(merge_heads_var)
        return w_o_var

    def construct(self, query_input, kv_input, bias):
        k, v = self.project_kv(kv_input)
        attend_var = self.attend(query_input, k, v, bias)
        return attend_var
#
sys.path.insert(0, '/work/main/model')
from layers import DecoderLayer

class DecoderLayerOpt(DecoderLayer, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.self_attn = MultiHeadAttentionOpt_1(self.self_attn)
        self.cross_attn = MultiHeadAttentionOpt_2(self.cross_attn)
        self.ffn = FeedForwardOpt_1(self.ffn)

    def construct(self, x, memory, tgt_bias, src_bias):
        h = self.norm1.before(x)
        self_attn_var = self.self_attn(h, h, tgt_bias)
        x = self.norm1.after(x, self_attn_var)
        before_var_1 = self.norm2.before(x)
        cross_attn_var = self.cross_attn(before_var_1, memory, src_bias)
        x = self.norm2.after(x, cross_attn_var)
        before_var = self.norm3.before(x)
        ffn_var = self.ffn(before_var)
        after_var = self.norm3.after(x, ffn_var)
        return after_var

    def step(self, x, write, self_k, self_v, self_bias, cross_k, cross_v, src_bias):
        """One incremental decoding step.

        x [B, 1, d]; write [1, 1, T, 1] (1.0 at this position, else 0.0) marks the cache slot of this position;
        self_k/self_v [B, H, T, dk] hold earlier positions; self_bias [1, 1, 1, T] hides
        slots not yet written; cross_k/cross_v [B, H, Ls, dk] are the projected memory.
        Returns the output [B, 1, d] and the updated self-attention caches.
        """
        h = self.norm1.before(x)
        k_new, v_new = self.self_attn.project_kv(h)
        self_k = self_k + write * k_new
        self_v = self_v + write * v_new
        x = self.norm1.after(x, self.self_attn.attend(h, self_k, self_v, self_bias))
        x = self.norm2.after(x, self.cross_attn.attend(self.norm2.before(x), cross_k, cross_v, src_bias))
        return (self.norm3.after(x, self.ffn(self.norm3.before(x))), self_k, self_v)
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_5(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_4(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')

class FeedForwardOpt(FeedForward, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.w1 = DenseOpt_4(self.w1)
        self.dropout = DropoutOpt(self.dropout)
        self.w2 = DenseOpt_5(self.w2)

    def construct(self, x):
        w1_var = self.w1(x)
        relu_var = relu_opt(w1_var)
        dropout_var = self.dropout(relu_var)
        w2_var = self.w2(dropout_var)
        return w2_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_3(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')

class ScaledDotProductAttentionOpt(ScaledDotProductAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.dropout = DropoutOpt(self.dropout)

    def construct(self, q, k, v, bias):
        mult_var = q * self.scale
        mult_var = amp_cast(mult_var, mindspore.float16)
        k = amp_cast(k, mindspore.float16)
        qk_var = self.qk(mult_var, k)
        qk_var = amp_cast(qk_var, mindspore.float32)
        scores = qk_var + bias
        softmax_var = self.softmax(scores)
        weights = self.dropout(softmax_var)
        weights = amp_cast(weights, mindspore.float16)
        v = amp_cast(v, mindspore.float16)
        av_var = self.av(weights, v)
        av_var = amp_cast(av_var, mindspore.float32)
        return av_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_2(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt_1(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')

class DenseOpt(Dense, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        x_var = amp_cast(x, mindspore.float16)
        x_shape = self.shape_op(x_var)
        x_shape = amp_cast(x_shape, mindspore.float32)
        len_var_1 = len(x_shape)
        compare_var_1 = len_var_1 != 2
        if compare_var_1:
            subscript_var = x_shape[-1]
            usub_var = -1
            tuple_var = (usub_var, subscript_var)
            x_var_4 = amp_cast(x, mindspore.float16)
            tuple_var = amp_cast(tuple_var, mindspore.float16)
            x = self.reshape(x_var_4, tuple_var)
            x = amp_cast(x, mindspore.float32)
        x_var_1 = amp_cast(x, mindspore.float16)
        weight_var = amp_cast(self.weight, mindspore.float16)
        x = self.matmul(x_var_1, weight_var)
        x = amp_cast(x, mindspore.float32)
        if self.has_bias:
            x_var_3 = amp_cast(x, mindspore.float16)
            bias_var = amp_cast(self.bias, mindspore.float16)
            x = self.bias_add(x_var_3, bias_var)
            x = amp_cast(x, mindspore.float32)
        if self.activation_flag:
            x = self.activation(x)
        len_var = len(x_shape)
        compare_var = len_var != 2
        if compare_var:
            subscript_var_2 = ops.shape(x)[-1]
            tuple_var_1 = (subscript_var_2,)
            subscript_var_1 = x_shape[:-1]
            out_shape = subscript_var_1 + tuple_var_1
            x_var_2 = amp_cast(x, mindspore.float16)
            out_shape = amp_cast(out_shape, mindspore.float16)
            x = self.reshape(x_var_2, out_shape)
            x = amp_cast(x, mindspore.float32)
        return x

    def extend_repr(self):
        s = f'input_channels={self.in_channels}, output_channels={self.out_channels}'
        if self.has_bias:
            s += f', has_bias={self.has_bias}'
        if self.activation_flag:
            s += f', activation={self.activation}'
        return s
#
sys.path.insert(0, '/work/main/model')

class MultiHeadAttentionOpt(MultiHeadAttention, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.w_v = DenseOpt(self.w_v)
        self.w_k = DenseOpt_1(self.w_k)
        self.w_q = DenseOpt_2(self.w_q)
        self.attention = ScaledDotProductAttentionOpt(self.attention)
        self.w_o = DenseOpt_3(self.w_o)

    def split_heads(self, x):
        b, length, _ = x.shape
        reshape_var = x.reshape(b, length, self.n_heads, self.d_k)
        transpose_var = reshape_var.transpose(0, 2, 1, 3)
        return transpose_var

    def merge_heads(self, x):
        b, _, length, _ = x.shape
        mult_var = self.n_heads * self.d_k
        transpose_var_1 = x.transpose(0, 2, 1, 3)
        reshape_var_1 = transpose_var_1.reshape(b, length, mult_var)
        return reshape_var_1

    def project_kv(self, kv_input):
        w_v_var = self.w_v(kv_input)
        split_heads_var_1 = self.split_heads(w_v_var)
        w_k_var = self.w_k(kv_input)
        split_heads_var = self.split_heads(w_k_var)
        tuple_var = (split_heads_var, split_heads_var_1)
        return tuple_var

    def attend(self, query_input, k, v, bias):
        w_q_var = self.w_q(query_input)
        q = self.split_heads(w_q_var)
        attention_var = self.attention(q, k, v, bias)
        merge_heads_var = self.merge_heads(attention_var)
        w_o_var = self.w_o(merge_heads_var)
        return w_o_var

    def construct(self, query_input, kv_input, bias):
        k, v = self.project_kv(kv_input)
        attend_var = self.attend(query_input, k, v, bias)
        return attend_var
#
sys.path.insert(0, '/work/main/model')
from layers import EncoderLayer

class EncoderLayerOpt(EncoderLayer, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.self_attn = MultiHeadAttentionOpt(self.self_attn)
        self.ffn = FeedForwardOpt(self.ffn)

    def construct(self, x, src_bias):
        h = self.norm1.before(x)
        self_attn_var = self.self_attn(h, h, src_bias)
        x = self.norm1.after(x, self_attn_var)
        before_var = self.norm2.before(x)
        ffn_var = self.ffn(before_var)
        after_var = self.norm2.after(x, ffn_var)
        return after_var
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')
from mindspore import log as logger
from mindspore.nn.layer.basic import Dropout

class DropoutOpt(Dropout, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, x):
        compare_var_1 = self.p == 0
        compare_var = self.keep_prob == 1
        not_var = not self.training
        or_var = not_var or compare_var or compare_var_1
        if or_var:
            return x
        out, _ = self.dropout(x)
        return out

    def extend_repr(self):
        if self.p is None:
            logger.warning('For Dropout, this parameter `keep_prob` will be deprecated, please use `p` instead.')
            return f'keep_prob={self.keep_prob}'
        return f'p={self.p}'
#
sys.path.insert(0, '/work/main/model')
from mindspore import nn, ops
from positional import PositionalEncoding

class PositionalEncodingOpt(PositionalEncoding, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.dropout = DropoutOpt(self.dropout)
        self.dropout = DropoutOpt(self.dropout)

    def construct(self, x, positions=None):
        compare_var = positions is None
        if compare_var:
            subscript_var = self.table[:x.shape[1]]
            expand_dims_var = subscript_var.expand_dims(0)
            add_var = x + expand_dims_var
            dropout_var = self.dropout(add_var)
            return dropout_var
        gather_var = gather_opt(self.table, positions, 0)
        add_var = x + gather_var
        dropout_var = self.dropout(add_var)
        return dropout_var

    def at(self, x, position):
        """One decoding step: x [B, 1, d] at integer tensor `position` []."""
        row = ops.gather(self.table, position.reshape(1), 0)
        return self.dropout(x + row.expand_dims(0))
#
sys.path.insert(0, '/work/main/.venv/lib/python3.11/site-packages/mindspore/nn/layer')
from mindspore.nn.layer.embedding import Embedding

class EmbeddingOpt(Embedding, Cell):

    def __init__(self, obj):
        Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)

    def construct(self, ids):
        tuple_var = (self.embedding_size,)
        get_shp_var = self.get_shp(ids)
        out_shape = get_shp_var + tuple_var
        flat_ids = self.reshape_flat(ids, self.shp_flat)
        if self.use_one_hot:
            one_hot_ids = self.one_hot(flat_ids, self.vocab_size, self.on_value, self.off_value)
            one_hot_ids = amp_cast(one_hot_ids, mindspore.float16)
            embedding_table_var = amp_cast(self.embedding_table, mindspore.float16)
            output_for_reshape = self.array_mul(one_hot_ids, embedding_table_var)
            output_for_reshape = amp_cast(output_for_reshape, mindspore.float32)
        else:
            output_for_reshape = self.gather(self.embedding_table, flat_ids, 0)
        output = self.reshape(output_for_reshape, out_shape)
        return output

    def extend_repr(self):
        return f'vocab_size={self.vocab_size}, embedding_size={self.embedding_size}, use_one_hot={self.use_one_hot}, embedding_table={self.embedding_table}, dtype={self.dtype}, padding_idx={self.padding_idx}'
#
sys.path.insert(0, '/work/main/model')
from model.masks import NEG_INF
from transformer import Transformer

class TransformerOpt(Transformer, nn.Cell):

    def __init__(self, obj):
        nn.Cell.__init__(self)
        for key, value in obj.__dict__.items():
            setattr(self, key, value)
        self.src_embed = EmbeddingOpt(self.src_embed)
        self.positions = PositionalEncodingOpt(self.positions)
        self.encoder[0] = EncoderLayerOpt(self.encoder[0])
        self.tgt_embed = EmbeddingOpt(self.tgt_embed)
        self.positions = PositionalEncodingOpt(self.positions)
        self.decoder[0] = DecoderLayerOpt(self.decoder[0])
        self.logits = LogitsOpt(self.logits)

    def encode(self, src, src_seg=None, src_pos=None):
        compare_var = src_seg is None
        if compare_var:
            padding_mask_var = padding_mask(src, self.pad_id)
            src_bias = mask_to_bias(padding_mask_var)
        else:
            segment_mask_var = segment_mask(src_seg, src_seg)
            src_bias = mask_to_bias(segment_mask_var)
        src_embed_var = self.src_embed(src)
        mult_var = src_embed_var * self.embed_scale
        x = self.positions(mult_var, src_pos)
        self_encoder = self.encoder
        for layer in self_encoder:
            x = layer(x, src_bias)
        if self.cfg.pre_norm:
            x = self.encoder_norm(x)
        tuple_var = (x, src_bias)
        return tuple_var

    def output_weight(self):
        ifexp_var = self.tgt_embed.embedding_table if self.cfg.share_embeddings else self.out_proj.weight
        return ifexp_var

    def project(self, x):
        b, length, d = x.shape
        output_weight_var = self.output_weight()
        mult_var_2 = b * length
        reshape_var_3 = x.reshape(mult_var_2, d)
        logits_var = self.logits(reshape_var_3, output_weight_var)
        reshape_var_2 = logits_var.reshape(b, length, self.tgt_vocab)
        return reshape_var_2

    def decode(self, tgt_in, memory, src_bias, src_seg=None, tgt_seg=None, tgt_pos=None):
        decode_states_var = self.decode_states(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos)
        project_var = self.project(decode_states_var)
        return project_var

    def decode_states(self, tgt_in, memory, src_bias, src_seg=None, tgt_seg=None, tgt_pos=None):
        compare_var_1 = tgt_seg is None
        if compare_var_1:
            length = tgt_in.shape[1]
            causal_mask_var_1 = causal_mask(length)
            padding_mask_var_1 = padding_mask(tgt_in, self.pad_id)
            logical_and_var = logical_and_opt(padding_mask_var_1, causal_mask_var_1)
            tgt_bias = mask_to_bias(logical_and_var)
            cross_bias = src_bias
        else:
            segment_mask_var_2 = segment_mask(tgt_seg, tgt_seg, causal=True)
            tgt_bias = mask_to_bias(segment_mask_var_2)
            segment_mask_var_1 = segment_mask(tgt_seg, src_seg)
            cross_bias = mask_to_bias(segment_mask_var_1)
        tgt_embed_var = self.tgt_embed(tgt_in)
        mult_var_1 = tgt_embed_var * self.embed_scale
        x = self.positions(mult_var_1, tgt_pos)
        self_decoder = self.decoder
        for layer in self_decoder:
            x = layer(x, memory, tgt_bias, cross_bias)
        if self.cfg.pre_norm:
            x = self.decoder_norm(x)
        return x

    def construct(self, src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        memory, src_bias = self.encode(src, src_seg, src_pos)
        decode_var = self.decode(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos)
        return decode_var

    def start_decoding(self, src, max_len):
        """Encode once and build the caches for `decode_step`.

        Returns (src_bias, cross_k, cross_v, self_k, self_v); each cache is a tuple over
        decoder layers of [B, H, Ls, dk] (cross) or [B, H, max_len, dk] zeros (self).
        """
        memory, src_bias = self.encode(src)
        cross_k, cross_v, self_k, self_v = ((), (), (), ())
        for layer in self.decoder:
            k, v = layer.cross_attn.project_kv(memory)
            b, h, _, dk = k.shape
            cross_k += (k,)
            cross_v += (v,)
            self_k += (ops.zeros((b, h, max_len, dk), k.dtype),)
            self_v += (ops.zeros((b, h, max_len, dk), k.dtype),)
        return (src_bias, cross_k, cross_v, self_k, self_v)

    def decode_step(self, token, position, src_bias, cross_k, cross_v, self_k, self_v):
        """Log-probabilities of the next token given the previous one.

        token [B, 1] ids at integer `position` []; caches as from `start_decoding`.
        Returns log-probabilities [B, V] and the updated self-attention caches.
        """
        max_len = self_k[0].shape[2]
        slots = ops.arange(max_len, dtype=ms.int32).reshape(1, 1, max_len, 1)
        write = ops.equal(slots, position).astype(self_k[0].dtype)
        visible = ops.less_equal(slots.reshape(1, 1, 1, max_len), position)
        self_bias = ops.select(visible, ops.zeros(visible.shape, ms.float32), ops.fill(ms.float32, visible.shape, NEG_INF))
        x = self.positions.at(self.tgt_embed(token) * self.embed_scale, position)
        new_k, new_v = ((), ())
        for i, layer in enumerate(self.decoder):
            x, k, v = layer.step(x, write, self_k[i], self_v[i], self_bias, cross_k[i], cross_v[i], src_bias)
            new_k += (k,)
            new_v += (v,)
        if self.cfg.pre_norm:
            x = self.decoder_norm(x)
        logits = self.project(x).reshape(x.shape[0], self.tgt_vocab)
        return (ops.log_softmax(logits, -1), new_k, new_v)
#