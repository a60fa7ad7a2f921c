//! Branches: one member network of a [`Model`] along one route, the unit that EIO and DVERGE
//! distil and train (EIO: p routes of one Random Gated Network; DVERGE: the N members of an
//! ensemble), and several of them seen as one [`Classifier`] (the adversarial-training terms
//! attack them).

use tch::Tensor;

use super::{ensemble_logits, Classifier, Model, Net, Route};

/// One member network along one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Index of the member network in [`Model::nets`].
    pub member: usize,
    /// Its route (empty for a plain network).
    pub route: Route,
}

impl Branch {
    /// Every member of `model` on its all-zero route (an ensemble's members).
    pub fn members(model: &Model) -> Vec<Branch> {
        (0..model.nets.len())
            .map(|member| Branch { member, route: Route::zeros(model.gates()) })
            .collect()
    }

    /// The network this branch runs on.
    pub fn net<'a>(&self, model: &'a Model) -> &'a Net {
        &model.nets[self.member]
    }
}

/// Some branches of a model as one [`Classifier`] with BatchNorm in train or eval mode: one
/// branch gives its logits, several the log of their averaged softmax.
pub struct BranchView<'a> {
    model: &'a Model,
    branches: &'a [Branch],
    train: bool,
}

impl<'a> BranchView<'a> {
    /// A view of `branches` of `model`.
    pub fn new(model: &'a Model, branches: &'a [Branch], train: bool) -> Self {
        BranchView { model, branches, train }
    }
}

impl Classifier for BranchView<'_> {
    fn logits(&self, x: &Tensor, sgm: Option<f64>) -> Tensor {
        let run = |b: &Branch| {
            let net = b.net(self.model);
            match sgm {
                Some(g) if !self.train => net.forward_sgm(x, &b.route, g),
                _ => net.forward(x, &b.route, self.train),
            }
        };
        if self.branches.len() == 1 {
            return run(&self.branches[0]);
        }
        ensemble_logits(self.branches.iter().map(run).collect())
    }
}
