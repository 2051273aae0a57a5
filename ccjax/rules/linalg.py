"""``dot_general``: the other operand on contracted and own-free axes,
Kronecker pairs on batch axes and the differentiated operand's free axes."""
from __future__ import annotations

from ccjax.rules.base import RuleContext, labelled


def _dot_general(ctx: RuleContext):
    (lc, rc), (lb, rb) = ctx.params["dimension_numbers"]
    lhs, rhs = ctx.in_avals
    lfree = [k for k in range(lhs.ndim) if k not in lc and k not in lb]
    rfree = [k for k in range(rhs.ndim) if k not in rc and k not in rb]
    out_labels = ([("b", j) for j in range(len(lb))] + [("lf", k) for k in lfree]
                  + [("rf", k) for k in rfree])

    def operand_labels(ndim, contract, batch, tag):
        labels = []
        for k in range(ndim):
            if k in batch:
                labels.append(("b", list(batch).index(k)))
            elif k in contract:
                labels.append(("c", list(contract).index(k)))
            else:
                labels.append((tag, k))
        return labels

    l_labels = operand_labels(lhs.ndim, lc, lb, "lf")
    r_labels = operand_labels(rhs.ndim, rc, rb, "rf")
    dtype = ctx.out_avals[0].dtype
    parts = []
    if 0 in ctx.active:
        parts.append(labelled(0, 0, ctx, out_labels, l_labels, r_labels, tuple(rhs.shape),
                              lambda ins, outs: ins[1].astype(dtype)))
    if 1 in ctx.active:
        parts.append(labelled(0, 1, ctx, out_labels, r_labels, l_labels, tuple(lhs.shape),
                              lambda ins, outs: ins[0].astype(dtype)))
    return parts


RULES = {"dot_general": _dot_general}
