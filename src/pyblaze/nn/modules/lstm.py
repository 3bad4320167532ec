"""LSTMs whose stacked layers may have different sizes (:py:class:`StackedLSTM`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


class LSTMCell(nn.Module):
    """An LSTM cell written with plain tensor operations, so it has higher-order gradients.

    It computes exactly what :py:class:`torch.nn.LSTMCell` computes, with the same parameter
    names, shapes, gate order (input, forget, cell, output) and initialisation, so the
    state dicts of the two are interchangeable.

    Args:
        input_size: the size of the input.
        hidden_size: the size of the hidden and cell states.
        bias: use the biases ``bias_ih`` and ``bias_hh``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih: nn.Parameter | None
        self.bias_hh: nn.Parameter | None
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``."""
        bound = 1 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        """Advance one time step.

        Args:
            x: the input, ``[B, input_size]``.
            state: ``(h, c)``, each ``[B, hidden_size]``; zeros if ``None``.

        Returns:
            The new ``(h, c)``.
        """
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        gates = nn.functional.linear(x, self.weight_ih, self.bias_ih)
        gates = gates + nn.functional.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next


class StackedLSTMCell(nn.Module):
    """One time step of several LSTM cells stacked on each other, each with its own size.

    Layer ``k`` has hidden size ``hidden_sizes[k]`` and gets the hidden state of layer
    ``k - 1`` (the input for layer 0) as its input.

    Args:
        input_size: the size of the input.
        hidden_sizes: the hidden size of every layer, bottom first.
        bias: use biases.
        cudnn: use :py:class:`torch.nn.LSTMCell` (fast, cuDNN on GPUs). ``False`` uses
            :py:class:`LSTMCell`, which supports higher-order gradients.

    Raises:
        ValueError: if ``hidden_sizes`` is empty.
    """

    def __init__(
        self, input_size: int, hidden_sizes: Sequence[int], bias: bool = True, cudnn: bool = True
    ) -> None:
        super().__init__()
        sizes = list(hidden_sizes)
        if not sizes:
            raise ValueError("hidden_sizes must name at least one layer, got []")
        cell_type: type[nn.Module] = nn.LSTMCell if cudnn else LSTMCell
        self.num_stacked = len(sizes)
        self.hidden_sizes = sizes
        self.cells = nn.ModuleList(
            cell_type(n_in, n_out, bias=bias)
            for n_in, n_out in zip([input_size, *sizes[:-1]], sizes, strict=True)
        )

    def forward(
        self, x: torch.Tensor, initial_states: Sequence[State] | None = None
    ) -> tuple[torch.Tensor, list[State]]:
        """Advance every layer one time step.

        Args:
            x: the input, ``[B, input_size]``.
            initial_states: ``(h, c)`` of every layer (zeros if ``None``); not modified.

        Returns:
            The hidden state of the top layer and the new ``(h, c)`` of every layer.

        Raises:
            ValueError: if ``initial_states`` does not have one entry per layer.
        """
        if initial_states is not None and len(initial_states) != self.num_stacked:
            raise ValueError(
                f"initial_states must hold one (h, c) per layer ({self.num_stacked}), "
                f"got {len(initial_states)}"
            )
        states: list[State] = []
        for k, cell in enumerate(self.cells):
            h, c = cell(x, None if initial_states is None else tuple(initial_states[k]))
            states.append((h, c))
            x = h
        return x, states


class StackedLSTM(nn.Module):
    """An LSTM over sequences whose stacked layers may have different hidden sizes.

    With equal sizes and ``cudnn=True`` it computes what a multi-layer
    :py:class:`torch.nn.LSTM` computes; ``cudnn=False`` gives higher-order gradients.

    Args:
        input_size: the size of the sequence elements.
        hidden_sizes: the hidden size of every layer, bottom first.
        bias: use biases.
        batch_first: inputs and outputs are ``[B, S, ...]`` instead of ``[S, B, ...]``.
        cudnn: see :py:class:`StackedLSTMCell`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        bias: bool = True,
        batch_first: bool = False,
        cudnn: bool = True,
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.stacked_cell = StackedLSTMCell(input_size, hidden_sizes, bias=bias, cudnn=cudnn)

    def forward(
        self,
        inputs: torch.Tensor,
        initial_states: Sequence[State] | None = None,
        return_sequence: bool = True,
    ) -> torch.Tensor:
        """Run the LSTM over a sequence.

        Args:
            inputs: ``[S, B, input_size]`` (``[B, S, input_size]`` with ``batch_first``).
            initial_states: ``(h, c)`` of every layer; zeros if ``None``.
            return_sequence: return the top layer's output at every step; else only at the
                last step.

        Returns:
            ``[S, B, H]`` (``[B, S, H]`` with ``batch_first``) or ``[B, H]``, where ``H`` is
            the top layer's hidden size.
        """
        if self.batch_first:
            inputs = inputs.transpose(0, 1)
        states: Sequence[State] | None = initial_states
        outputs = []
        output = inputs.new_empty(0)
        for step in inputs:
            output, states = self.stacked_cell(step, states)
            if return_sequence:
                outputs.append(output)
        if not return_sequence:
            return output
        result = torch.stack(outputs)
        return result.transpose(0, 1) if self.batch_first else result


_LSTMCell = LSTMCell
"""PyBlaze 1.1.6's name of :py:class:`LSTMCell` (its own tests import it)."""

__all__ = ["LSTMCell", "StackedLSTM", "StackedLSTMCell"]
