//! ResNet-20 for CIFAR (He et al., "Deep Residual Learning for Image Recognition",
//! arXiv:1512.03385) and its Random Gated Network (Ensemble-in-One, Sec. 3.2), in one type.
//!
//! Layout and parameter names follow the DVERGE reference (`models/resnet.py` of
//! zjysteven/DVERGE): `conv1`, `bn1`, `layer{1,2,3}.{0,1,2}.{conv1,bn1,conv2,bn2}`,
//! `layer{2,3}.0.shortcut.{0,1}`, `linear`. A plain ResNet-20 is the network with no gated block.
//! An augmented (gated) conv+BN slot holds its `n` copies under `<name>.<i>`: `layer1.0.conv1.1`
//! is copy 1 of that conv. With shared convolutions only the BatchNorms are copied.
//!
//! With `shortcut = identity` (option A of He et al.) the blocks that change shape add their
//! input subsampled by 2 and zero-padded with the new channels, and have no `shortcut` weights:
//! the layout of akamaster/pytorch_resnet_cifar10 (`resnet.py`, `option='A'`).

use tch::nn;
use tch::Tensor;

use super::{ArchConfig, Augment, Shortcut};
use crate::model::route::Route;

/// CIFAR-10 channel means, applied inside the model.
pub const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 channel standard deviations, applied inside the model.
pub const STD: [f64; 3] = [0.2023, 0.1994, 0.2010];
/// Number of feature layers (1 = stem, 2+2b and 3+2b inside block b, 20 = logits).
pub const FEATURE_LAYERS: usize = 20;
/// Number of conv+BN slots in ResNet-20 (19 3x3 convs + 2 projection shortcuts).
pub const SLOTS: usize = 21;
/// BatchNorm momentum of every layer (PyTorch's default): a train-mode forward moves each
/// running statistic a tenth of the way to the batch's.
pub const BN_MOMENTUM: f64 = 0.1;

/// A conv+BN slot, gated when it has several copies.
#[derive(Debug)]
struct ConvBn {
    convs: Vec<nn::Conv2D>,
    bns: Vec<nn::BatchNorm>,
    /// Index of this slot's gate in a route; `None` for an ungated slot.
    gate: Option<usize>,
    /// Plain-network names of the conv and the BatchNorm (`layer1.0.conv1`, `layer1.0.bn1`).
    names: [String; 2],
    /// The convolution's stride (its padding is k/2).
    stride: i64,
}

/// Builds `n` layers under `p`: at `p` itself when `n == 1`, else under `p.0`, `p.1`, ...
fn copies_at<T>(p: &nn::Path, n: usize, build: impl Fn(&nn::Path) -> T) -> Vec<T> {
    if n == 1 {
        vec![build(p)]
    } else {
        (0..n).map(|i| build(&(p / i))).collect()
    }
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        pc: &nn::Path,
        pb: &nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        n_conv: usize,
        n_bn: usize,
        gate: Option<usize>,
    ) -> Self {
        let std = (2.0 / (k * k * cout) as f64).sqrt();
        let cfg = nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: false,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
            ..Default::default()
        };
        let bcfg = nn::BatchNormConfig {
            momentum: BN_MOMENTUM,
            eps: 1e-5,
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let convs = copies_at(pc, n_conv, |p| nn::conv2d(p, cin, cout, k, cfg));
        let bns = copies_at(pb, n_bn, |p| nn::batch_norm2d(p, cout, bcfg));
        let name = |p: &nn::Path| p.components().collect::<Vec<_>>().join(".");
        ConvBn { convs, bns, gate, names: [name(pc), name(pb)], stride }
    }

    /// Eval-mode conv+BN of ungated slot `of(net)` of every member at once: the members'
    /// channels side by side, one grouped convolution (`shared_input`: every member reads the
    /// same `x`, as the stem does) and one BatchNorm over all channels.
    fn grouped(slots: &[&ConvBn], x: &Tensor, shared_input: bool) -> Tensor {
        let cat = |f: &dyn Fn(&ConvBn) -> Tensor| {
            Tensor::cat(&slots.iter().map(|s| f(s)).collect::<Vec<_>>(), 0)
        };
        let w = cat(&|s| s.convs[0].ws.shallow_clone());
        let k = w.size()[2];
        let groups = if shared_input { 1 } else { slots.len() as i64 };
        let s0 = slots[0];
        let h = x.conv2d(&w, None::<Tensor>, [s0.stride; 2], [k / 2; 2], [1; 2], groups);
        let opt = |f: &dyn Fn(&nn::BatchNorm) -> &Option<Tensor>| {
            cat(&|s| f(&s.bns[0]).as_ref().expect("affine BatchNorm").shallow_clone())
        };
        h.batch_norm(
            Some(opt(&|b| &b.ws)),
            Some(opt(&|b| &b.bs)),
            Some(cat(&|s| s.bns[0].running_mean.shallow_clone())),
            Some(cat(&|s| s.bns[0].running_var.shallow_clone())),
            false,
            BN_MOMENTUM,
            1e-5,
            true,
        )
    }

    fn forward(&self, x: &Tensor, route: &Route, train: bool) -> Tensor {
        let g = self.gate.map_or(0, |i| route.0[i] as usize);
        let conv = &self.convs[if self.convs.len() == 1 { 0 } else { g }];
        let bn = &self.bns[if self.bns.len() == 1 { 0 } else { g }];
        x.apply(conv).apply_t(bn, train)
    }
}

#[derive(Debug)]
struct Block {
    c1: ConvBn,
    c2: ConvBn,
    shortcut: Option<ConvBn>,
    /// Option-A shortcut: channels of zeros added on each side of the subsampled input.
    pad: i64,
}

/// Where to stop a forward pass: feature layer 1..=20 (20 = logits), before or after its ReLU.
/// Numbered as `get_features` of the DVERGE and EIO codes: 1 the stem's BatchNorm, then two per
/// block (after its first BatchNorm, after the shortcut's sum), 20 the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    /// Feature layer, 1..=20.
    pub layer: usize,
    /// Take the features before the ReLU (DVERGE) instead of after it (EIO code). Layer 1 is
    /// always before its ReLU: the codes return the stem's output there whatever they are asked.
    pub before_relu: bool,
}

/// ResNet-20, optionally with Random Gated Blocks.
#[derive(Debug)]
pub struct Net {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: nn::Linear,
    arch: ArchConfig,
    gates: usize,
    /// `gates_through[l]`: number of gates that feature layer `l` depends on.
    gates_through: [usize; FEATURE_LAYERS + 1],
    mean: Tensor,
    std: Tensor,
    /// Computes in channels-last (set by `Model::set_memory_format` with the weights' layout).
    pub(crate) channels_last: bool,
}

/// How a forward pass runs.
#[derive(Debug, Clone, Copy)]
struct Pass<'a> {
    route: &'a Route,
    train: bool,
    tap: Option<Tap>,
    /// Skip-gradient scaling of residual branches (SGM); `None` for a plain backward.
    sgm: Option<f64>,
}

impl Net {
    /// Builds the network under `p` (weights drawn from libtorch's generator).
    pub fn new(p: &nn::Path, arch: &ArchConfig) -> Self {
        let augmented = arch.augmented_slots();
        let mut next_gate = 0usize;
        let mut slot = 0usize;
        let mut make = |pc: &nn::Path, pb: &nn::Path, cin, cout, k, stride| {
            let aug = augmented[slot];
            slot += 1;
            let (n_conv, n_bn, gate) = if aug {
                let g = next_gate;
                next_gate += 1;
                (if arch.share_conv { 1 } else { arch.copies }, arch.copies, Some(g))
            } else {
                (1, 1, None)
            };
            ConvBn::new(pc, pb, cin, cout, k, stride, n_conv, n_bn, gate)
        };
        let stem = make(&(p / "conv1"), &(p / "bn1"), 3, 16, 3, 1);
        let mut gates_through = [0usize; FEATURE_LAYERS + 1];
        let mut blocks = Vec::new();
        let mut cin = 16;
        gates_through[1] = stem.gate.map_or(0, |g| g + 1);
        let mut seen = gates_through[1];
        for (stage, width) in [16i64, 32, 64].into_iter().enumerate() {
            for i in 0..3 {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let bp = p / format!("layer{}", stage + 1) / i;
                let c1 = make(&(&bp / "conv1"), &(&bp / "bn1"), cin, width, 3, stride);
                let c2 = make(&(&bp / "conv2"), &(&bp / "bn2"), width, width, 3, 1);
                let reshape = stride != 1 || cin != width;
                let projection = arch.shortcut == Shortcut::Projection;
                let shortcut = (reshape && projection).then(|| {
                    let sp = &bp / "shortcut";
                    make(&(&sp / "0"), &(&sp / "1"), cin, width, 1, stride)
                });
                let pad = if reshape && !projection { (width - cin) / 2 } else { 0 };
                let b = blocks.len();
                seen = seen.max(c1.gate.map_or(0, |g| g + 1));
                gates_through[2 + 2 * b] = seen;
                for s in [Some(&c2), shortcut.as_ref()].into_iter().flatten() {
                    seen = seen.max(s.gate.map_or(0, |g| g + 1));
                }
                gates_through[3 + 2 * b] = seen;
                blocks.push(Block { c1, c2, shortcut, pad });
                cin = width;
            }
        }
        gates_through[FEATURE_LAYERS] = next_gate;
        let bound = 1.0 / 64f64.sqrt();
        let fc = nn::linear(
            p / "linear",
            64,
            10,
            nn::LinearConfig {
                ws_init: nn::Init::Uniform { lo: -bound, up: bound },
                bs_init: Some(nn::Init::Uniform { lo: -bound, up: bound }),
                bias: true,
            },
        );
        let dev = p.device();
        Net {
            stem,
            blocks,
            fc,
            arch: arch.clone(),
            gates: next_gate,
            gates_through,
            mean: Tensor::from_slice(&arch.mean)
                .to_kind(tch::Kind::Float)
                .view([1, 3, 1, 1])
                .to_device(dev),
            std: Tensor::from_slice(&arch.std)
                .to_kind(tch::Kind::Float)
                .view([1, 3, 1, 1])
                .to_device(dev),
            channels_last: false,
        }
    }

    /// The architecture.
    pub fn arch(&self) -> &ArchConfig {
        &self.arch
    }

    /// Number of gated blocks (route length); 0 for a plain ResNet-20.
    pub fn gates(&self) -> usize {
        self.gates
    }

    /// Number of gates that feature layer `layer` (1..=20) depends on: the route prefix that
    /// decides its value.
    pub fn gates_through(&self, layer: usize) -> usize {
        self.gates_through[layer.clamp(1, FEATURE_LAYERS)]
    }

    /// Logits of `x` (`[B,3,32,32]` in [0, 1]) along `route`.
    pub fn forward(&self, x: &Tensor, route: &Route, train: bool) -> Tensor {
        self.run(x, Pass { route, train, tap: None, sgm: None })
    }

    /// Features at `tap` along `route`; computes only the layers up to the tap.
    pub fn features(&self, x: &Tensor, route: &Route, train: bool, tap: Tap) -> Tensor {
        self.run(x, Pass { route, train, tap: Some(tap), sgm: None })
    }

    /// Eval-mode logits whose backward pass scales the gradient through every residual branch by
    /// `gamma` (skip gradient method), keeping the shortcut's; the forward values are unchanged.
    pub fn forward_sgm(&self, x: &Tensor, route: &Route, gamma: f64) -> Tensor {
        self.run(x, Pass { route, train: false, tap: None, sgm: Some(gamma) })
    }

    fn slots(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(
            self.blocks.iter().flat_map(|b| {
                [Some(&b.c1), Some(&b.c2), b.shortcut.as_ref()].into_iter().flatten()
            }),
        )
    }

    /// The name of this network's variable that plays the role of plain ResNet-20 variable
    /// `plain` on `route` (`layer1.0.conv1.weight` -> `layer1.0.conv1.1.weight` when that slot
    /// is gated with independent copies and the route picks copy 1).
    pub fn routed_name(&self, plain: &str, route: &Route) -> String {
        for s in self.slots() {
            let g = s.gate.map_or(0, |i| route.0[i] as usize);
            for (name, n) in s.names.iter().zip([s.convs.len(), s.bns.len()]) {
                if let Some(param) =
                    plain.strip_prefix(name.as_str()).and_then(|r| r.strip_prefix('.'))
                {
                    if !param.contains('.') {
                        return if n > 1 {
                            format!("{name}.{g}.{param}")
                        } else {
                            plain.to_string()
                        };
                    }
                }
            }
        }
        plain.to_string()
    }

    /// Eval-mode logits of `nets` (the members of a plain ensemble, one architecture) on the
    /// shared input `x`, computed as one grouped network: the members' channels side by side,
    /// every convolution grouped by member. One kernel launch per layer for all members, where
    /// a per-member forward launches one per member: meant for where launches dominate (small
    /// batches on a GPU; no faster on 2 CPU cores, results/bench.md). Same values as the per-member
    /// forward within float rounding. Returns `[N, B, 10]`. `sgm` as in [`Net::forward_sgm`].
    pub fn grouped_logits(nets: &[&Net], x: &Tensor, sgm: Option<f64>) -> Tensor {
        let n = nets.len() as i64;
        let first = nets[0];
        assert!(
            nets.iter().all(|m| m.gates == 0 && m.arch == first.arch),
            "grouped members are plain networks of one architecture"
        );
        let mut h = (x - &first.mean) / &first.std;
        if first.channels_last {
            h = super::with_layout(&h, true);
        }
        let slot = |f: &dyn Fn(&Net) -> &ConvBn| nets.iter().map(|m| f(m)).collect::<Vec<_>>();
        let mut h = first.act(&ConvBn::grouped(&slot(&|m| &m.stem), &h, true));
        for (b, block) in first.blocks.iter().enumerate() {
            let c1 = ConvBn::grouped(&slot(&|m| &m.blocks[b].c1), &h, false);
            let mut branch = ConvBn::grouped(&slot(&|m| &m.blocks[b].c2), &first.act(&c1), false);
            if let Some(g) = sgm {
                let d = branch.detach();
                branch = &d + (&branch - &d) * g;
            }
            let short = match &block.shortcut {
                Some(_) => ConvBn::grouped(
                    &slot(&|m| m.blocks[b].shortcut.as_ref().expect("same architecture")),
                    &h,
                    false,
                ),
                None if block.pad > 0 => {
                    // Option A per member: subsample, then zero channels on each side of each
                    // member's group.
                    let sub = h.slice(2, 0, None, 2).slice(3, 0, None, 2);
                    let [bs, c, hh, ww] = sub.size()[..] else { unreachable!("4-D") };
                    sub.reshape([bs, n, c / n, hh, ww])
                        .constant_pad_nd([0, 0, 0, 0, block.pad, block.pad])
                        .reshape([bs, c + 2 * n * block.pad, hh, ww])
                }
                None => h.shallow_clone(),
            };
            h = first.act(&(branch + short));
        }
        let bs = h.size()[0];
        let pooled = h.adaptive_avg_pool2d([1, 1]).reshape([bs, n, -1]);
        let w = Tensor::stack(&nets.iter().map(|m| m.fc.ws.shallow_clone()).collect::<Vec<_>>(), 0);
        let b = Tensor::stack(
            &nets
                .iter()
                .map(|m| m.fc.bs.as_ref().expect("bias").shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        Tensor::einsum("bnc,nkc->nbk", &[&pooled, &w], None::<i64>) + b.unsqueeze(1)
    }

    /// The activation: ReLU, or leaky ReLU with the architecture's slope.
    fn act(&self, x: &Tensor) -> Tensor {
        if self.arch.relu_slope == 0.0 {
            x.relu()
        } else {
            x.where_self(&x.gt(0.0), &(x * self.arch.relu_slope))
        }
    }

    fn run(&self, x: &Tensor, pass: Pass) -> Tensor {
        let Pass { route, train, tap, sgm } = pass;
        assert_eq!(
            route.len(),
            self.gates,
            "route length (user routes are checked by Route::check)"
        );
        let stop = |layer: usize, pre: &Tensor| -> Option<Tensor> {
            match tap {
                Some(t) if t.layer == layer => Some(if t.before_relu || layer == 1 {
                    pre.shallow_clone()
                } else {
                    self.act(pre)
                }),
                _ => None,
            }
        };
        let mut x = (x - &self.mean) / &self.std;
        if self.channels_last {
            x = super::with_layout(&x, true);
        }
        let pre = self.stem.forward(&x, route, train);
        if let Some(f) = stop(1, &pre) {
            return f;
        }
        let mut h = self.act(&pre);
        for (b, block) in self.blocks.iter().enumerate() {
            let pre1 = block.c1.forward(&h, route, train);
            if let Some(f) = stop(2 + 2 * b, &pre1) {
                return f;
            }
            let mut branch = block.c2.forward(&self.act(&pre1), route, train);
            if let Some(g) = sgm {
                // Same value, gradient scaled by g.
                let d = branch.detach();
                branch = &d + (&branch - &d) * g;
            }
            let short = match &block.shortcut {
                Some(s) => s.forward(&h, route, train),
                None if block.pad > 0 => h
                    .slice(2, 0, None, 2)
                    .slice(3, 0, None, 2)
                    .constant_pad_nd([0, 0, 0, 0, block.pad, block.pad]),
                None => h.shallow_clone(),
            };
            let pre2 = branch + short;
            if let Some(f) = stop(3 + 2 * b, &pre2) {
                return f;
            }
            h = self.act(&pre2);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply_t(&self.fc, train)
    }
}

impl ArchConfig {
    /// Which of the 21 slots (stem, then per block conv1, conv2, shortcut) carry gates.
    pub fn augmented_slots(&self) -> [bool; SLOTS] {
        let mut out = [false; SLOTS];
        if self.copies < 2 {
            return out;
        }
        // Slot order: stem; per block conv1, conv2, then the shortcut where it exists.
        let shortcut_slots = [9usize, 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = match self.augment {
                Augment::None => false,
                Augment::All => true,
                Augment::Conv3x3 => !shortcut_slots.contains(&i),
                Augment::Top(k) => i < k,
            };
        }
        out
    }
}
