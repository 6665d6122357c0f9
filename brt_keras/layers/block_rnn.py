"""`keras.layers.RNN` over blocks, with correct functional output shapes."""

import keras


@keras.saving.register_keras_serializable(package="brt_keras")
class BlockRNN(keras.layers.RNN):
    """RNN whose steps are blocks `[B, W, d]` and whose states are tensors.

    Stock `RNN.compute_output_shape` assumes rank-3 inputs and integer
    state sizes, so functional models would get wrong shapes; this subclass
    derives them from the cell's `output_size` and `state_size` tuples.

    Example:
    >>> cell = BlockRecurrentCell(64, 4, 16, 128, block_size=8, num_states=8)
    >>> blocks = keras.Input((4, 8, 64))
    >>> y, s, k, v = BlockRNN(cell, return_sequences=True, return_state=True)(
    ...     blocks)
    >>> y.shape, s.shape, k.shape
    ((None, 4, 8, 64), (None, 8, 64), (None, 8, 4, 16))
    """

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch, steps = sequences_shape[0], sequences_shape[1]
        output_size = tuple(self.cell.output_size)
        if self.return_sequences:
            output_shape = (batch, steps) + output_size
        else:
            output_shape = (batch,) + output_size
        if not self.return_state:
            return output_shape
        return output_shape, *[(batch,) + tuple(s) for s in self.cell.state_size]
