//! transformers' `EncodecLSTM`: a stacked `torch.nn.LSTM` over time, plus its input.

use candle_core::Tensor;

use super::Config;
use crate::error::Result;
use crate::weights::Vb;

/// One layer of `torch.nn.LSTM` (gate order i, f, g, o), with the input projection of all
/// frames done as one matmul before the recurrence.
pub(super) struct LstmLayer {
    /// `W_ih`, `[4H, in]`.
    pub(super) w_ih: Tensor,
    /// `W_hh`, `[4H, H]`.
    pub(super) w_hh: Tensor,
    /// `b_ih + b_hh`, `[4H]`.
    pub(super) bias: Tensor,
    pub(super) hidden: usize,
}

impl LstmLayer {
    fn new(dim: usize, layer: usize, vb: &Vb<'_>) -> Result<Self> {
        let w_ih = vb.get(&[4 * dim, dim], &format!("weight_ih_l{layer}"))?;
        let w_hh = vb.get(&[4 * dim, dim], &format!("weight_hh_l{layer}"))?;
        let b_ih = vb.get(&[4 * dim], &format!("bias_ih_l{layer}"))?;
        let b_hh = vb.get(&[4 * dim], &format!("bias_hh_l{layer}"))?;
        Self::from_tensors(&w_ih, &w_hh, &b_ih, &b_hh)
    }

    fn from_tensors(w_ih: &Tensor, w_hh: &Tensor, b_ih: &Tensor, b_hh: &Tensor) -> Result<Self> {
        let hidden = w_hh.dim(1)?;
        Ok(Self {
            w_ih: w_ih.contiguous()?,
            w_hh: w_hh.contiguous()?,
            bias: (b_ih + b_hh)?,
            hidden,
        })
    }

    /// `[T, B, in]` -> `[T, B, H]`, from the state `(h, c)` (`[B, H]` each), which ends as
    /// the state after the last frame.
    fn forward_from(&self, xs_tbc: &Tensor, state: &mut (Tensor, Tensor)) -> Result<Tensor> {
        let (steps, batch, c_in) = xs_tbc.dims3()?;
        let h = self.hidden;
        // Hoisted: W_ih·x + b_ih + b_hh for every frame at once; the loop only adds W_hh·h.
        let projected = xs_tbc
            .reshape((steps * batch, c_in))?
            .matmul(&self.w_ih.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((steps, batch, 4 * h))?;
        let (mut hx, mut cx) = state.clone();
        let mut outputs = Vec::with_capacity(steps);
        for t in 0..steps {
            let gates = (projected.get(t)? + hx.matmul(&self.w_hh.t()?)?)?;
            // Sigmoid over all four gates is one kernel; the g slice is simply not used.
            let sig = candle_nn::ops::sigmoid(&gates)?;
            let in_gate = sig.narrow(1, 0, h)?;
            let forget_gate = sig.narrow(1, h, h)?;
            let cell_gate = gates.narrow(1, 2 * h, h)?.tanh()?;
            let out_gate = sig.narrow(1, 3 * h, h)?;
            cx = ((forget_gate * &cx)? + (in_gate * cell_gate)?)?;
            hx = (out_gate * cx.tanh()?)?;
            outputs.push(hx.clone());
        }
        *state = (hx, cx);
        Ok(Tensor::stack(&outputs, 0)?)
    }
}

/// An LSTM's state between the pieces of a sequence it runs over, for one batch item: each
/// layer's hidden and cell vectors after the frames so far (none before the first frame,
/// which starts from zeros).
#[derive(Clone, Debug, Default)]
pub(super) struct LstmState {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl LstmState {
    /// Layer `l`'s `(h, c)`: zeros of `hidden` before the first frame; an error when the
    /// state was left by a layer of another size.
    pub(super) fn layer(&self, l: usize, hidden: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        match self.layers.get(l) {
            None => Ok((vec![0f32; hidden], vec![0f32; hidden])),
            Some((h, c)) if h.len() == hidden && c.len() == hidden => Ok((h.clone(), c.clone())),
            Some((h, _)) => Err(crate::error::ModelError::Candle(candle_core::Error::Msg(
                format!(
                    "LSTM state of {} features for layer {l} of {hidden}",
                    h.len()
                ),
            ))),
        }
    }

    /// Keeps layer `l`'s `(h, c)` after the frames just run.
    pub(super) fn set_layer(&mut self, l: usize, state: (Vec<f32>, Vec<f32>)) {
        if self.layers.len() <= l {
            self.layers.resize(l + 1, (Vec::new(), Vec::new()));
        }
        self.layers[l] = state;
    }
}

/// transformers' `EncodecLSTM`: a stacked LSTM over the time axis plus its input.
pub(super) struct Lstm {
    pub(super) layers: Vec<LstmLayer>,
}

impl Lstm {
    /// Loads `lstm.{weight,bias}_{ih,hh}_l*` under `vb`.
    pub(super) fn new(dim: usize, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let vb = vb.pp("lstm");
        let layers = (0..cfg.num_lstm_layers)
            .map(|l| LstmLayer::new(dim, l, &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `[B, C, T]` -> `[B, C, T]`, from zero state.
    pub(super) fn forward(&self, xs_bct: &Tensor) -> Result<Tensor> {
        let (batch, _, _) = xs_bct.dims3()?;
        let zeros = |h: usize| Tensor::zeros((batch, h), xs_bct.dtype(), xs_bct.device());
        let mut states = self
            .layers
            .iter()
            .map(|layer| Ok((zeros(layer.hidden)?, zeros(layer.hidden)?)))
            .collect::<Result<Vec<_>>>()?;
        self.forward_from(xs_bct, &mut states)
    }

    /// `[1, C, T]` -> `[1, C, T]`: the frames after those `state` has seen, which it then
    /// holds the state after.
    pub(super) fn forward_stream(&self, xs_bct: &Tensor, state: &mut LstmState) -> Result<Tensor> {
        let (device, dtype) = (xs_bct.device(), xs_bct.dtype());
        let mut states = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let (h, c) = state.layer(l, layer.hidden)?;
                let row = |v: Vec<f32>| -> Result<Tensor> {
                    Ok(Tensor::from_vec(v, (1, layer.hidden), device)?.to_dtype(dtype)?)
                };
                Ok((row(h)?, row(c)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let ys = self.forward_from(xs_bct, &mut states)?;
        for (l, (h, c)) in states.into_iter().enumerate() {
            let vector = |t: Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?)
            };
            state.set_layer(l, (vector(h)?, vector(c)?));
        }
        Ok(ys)
    }

    /// The layers over `[B, C, T]` from each layer's `(h, c)`, plus the input.
    fn forward_from(&self, xs_bct: &Tensor, states: &mut [(Tensor, Tensor)]) -> Result<Tensor> {
        let xs_tbc = xs_bct.permute((2, 0, 1))?.contiguous()?;
        let mut ys = xs_tbc.clone();
        for (layer, state) in self.layers.iter().zip(states.iter_mut()) {
            ys = layer.forward_from(&ys, state)?;
        }
        let ys = (ys + xs_tbc)?;
        Ok(ys.permute((1, 2, 0))?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encodec::test_util::{random, row};

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn hoisted_lstm_matches_step_by_step_reference() -> Result<()> {
        let (dim, steps, batch, num_layers) = (4, 6, 2, 2);
        let mut layers = Vec::new();
        let mut raw = Vec::new();
        for l in 0..num_layers {
            let seed = 10 + 4 * l as u64;
            let w_ih = random(&[4 * dim, dim], seed, 0.5)?;
            let w_hh = random(&[4 * dim, dim], seed + 1, 0.5)?;
            let b_ih = random(&[4 * dim], seed + 2, 0.5)?;
            let b_hh = random(&[4 * dim], seed + 3, 0.5)?;
            layers.push(LstmLayer::from_tensors(&w_ih, &w_hh, &b_ih, &b_hh)?);
            raw.push([row(&w_ih), row(&w_hh), row(&b_ih), row(&b_hh)]);
        }
        let lstm = Lstm { layers };
        let x = random(&[batch, dim, steps], 99, 1.0)?;
        let got = row(&lstm.forward(&x)?);

        // Reference: nn.LSTM's equations one frame at a time, input layout [B, C, T].
        let xv = row(&x);
        let mut seq: Vec<Vec<Vec<f32>>> = (0..batch)
            .map(|b| {
                (0..steps)
                    .map(|t| (0..dim).map(|c| xv[(b * dim + c) * steps + t]).collect())
                    .collect()
            })
            .collect();
        let input = seq.clone();
        for [w_ih, w_hh, b_ih, b_hh] in &raw {
            for sample in seq.iter_mut() {
                let (mut h, mut c) = (vec![0f32; dim], vec![0f32; dim]);
                for frame in sample.iter_mut() {
                    let gate = |g: usize, j: usize| {
                        let r = g * dim + j;
                        let mut acc = b_ih[r] + b_hh[r];
                        for k in 0..dim {
                            acc += w_ih[r * dim + k] * frame[k] + w_hh[r * dim + k] * h[k];
                        }
                        acc
                    };
                    let gates: Vec<[f32; 4]> = (0..dim)
                        .map(|j| [gate(0, j), gate(1, j), gate(2, j), gate(3, j)])
                        .collect();
                    for (j, [i, f, g, o]) in gates.into_iter().enumerate() {
                        c[j] = sigmoid(f) * c[j] + sigmoid(i) * g.tanh();
                        h[j] = sigmoid(o) * c[j].tanh();
                    }
                    frame.clone_from(&h);
                }
            }
        }
        for b in 0..batch {
            for c in 0..dim {
                for t in 0..steps {
                    let expected = seq[b][t][c] + input[b][t][c];
                    let g = got[(b * dim + c) * steps + t];
                    assert!(
                        (g - expected).abs() < 1e-5,
                        "({b}, {c}, {t}): {g} vs {expected}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Run piece by piece from the state each piece leaves, on the candle path (the one
    /// GPUs take; here on the CPU in f32, so its device and dtype round trip is not
    /// exercised) and on the CPU buffers, the LSTM gives what it gives over the whole
    /// sequence at once.
    #[test]
    fn pieces_from_the_carried_state_are_the_whole_sequence() -> Result<()> {
        let (dim, steps) = (4, 9);
        let layers = (0..2)
            .map(|l| {
                let seed = 40 + 4 * l as u64;
                LstmLayer::from_tensors(
                    &random(&[4 * dim, dim], seed, 0.5)?,
                    &random(&[4 * dim, dim], seed + 1, 0.5)?,
                    &random(&[4 * dim], seed + 2, 0.5)?,
                    &random(&[4 * dim], seed + 3, 0.5)?,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let lstm = Lstm { layers };
        let x = random(&[1, dim, steps], 7, 1.0)?;
        let whole = lstm.forward(&x)?;
        for cut in [1, 4, 8] {
            let pieces = [x.narrow(2, 0, cut)?, x.narrow(2, cut, steps - cut)?];
            let (mut candle, mut cpu) = (LstmState::default(), LstmState::default());
            let mut by_candle = Vec::new();
            let mut by_cpu = Vec::new();
            for piece in &pieces {
                by_candle.push(lstm.forward_stream(piece, &mut candle)?);
                by_cpu.push(crate::encodec::cpu::run_lstm_from(&lstm, piece, &mut cpu)?);
            }
            for streamed in [Tensor::cat(&by_candle, 2)?, Tensor::cat(&by_cpu, 2)?] {
                let diff = crate::encodec::test_util::max_diff(&streamed, &whole);
                assert!(diff < 1e-6, "cut at {cut}: differs by {diff}");
            }
        }
        Ok(())
    }
}
