//! Routes through a Random Gated Network: one gate choice per Random Gated Block.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng as _;

use crate::error::{Error, Result};
use crate::seed::Rng;

/// One gate choice per gated block, in block order. Prints and parses as `0,1,1,...`.
/// The empty route drives a plain (ungated) network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Route(pub Vec<u8>);

impl Route {
    /// The all-zero route over `gates` blocks.
    pub fn zeros(gates: usize) -> Self {
        Route(vec![0; gates])
    }

    /// A uniformly random route: each gate independently uniform over `copies` choices.
    pub fn random(gates: usize, copies: usize, rng: &mut Rng) -> Self {
        Route((0..gates).map(|_| rng.gen_range(0..copies) as u8).collect())
    }

    /// Number of gates.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the route of a plain network.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the route fits a network with `gates` blocks of `copies` choices each.
    pub fn check(&self, gates: usize, copies: usize) -> Result<()> {
        if self.len() != gates {
            return Err(Error::config(format!(
                "route has {} gates but the network has {gates} gated blocks",
                self.len()
            )));
        }
        if let Some(g) = self.0.iter().find(|&&g| g as usize >= copies) {
            return Err(Error::config(format!(
                "route gate {g} out of range: blocks have {copies} copies (gates 0..{copies})"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.0.iter().map(|g| g.to_string()).collect();
        f.write_str(&s.join(","))
    }
}

impl FromStr for Route {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Ok(Route::default());
        }
        s.split(',')
            .map(|t| {
                t.trim().parse::<u8>().map_err(|_| {
                    Error::config(format!(
                        "bad route '{s}': expected gates like 0,1,0,... got '{t}'"
                    ))
                })
            })
            .collect::<Result<Vec<u8>>>()
            .map(Route)
    }
}

/// Draws `p` routes whose first `prefix` gates pairwise differ (paper Alg. 1 line 13), with `p`
/// capped at the number of distinct prefixes, `copies^prefix`. Every route is uniform over the
/// remaining gates.
pub fn sample_distinct(
    gates: usize,
    copies: usize,
    prefix: usize,
    p: usize,
    rng: &mut Rng,
) -> Vec<Route> {
    let prefix = prefix.min(gates);
    let distinct = (copies as f64).powi(prefix as i32);
    let p = if distinct < p as f64 { distinct as usize } else { p };
    let mut routes: Vec<Route> = Vec::with_capacity(p);
    if distinct <= 4.0 * p as f64 && distinct <= 1e6 {
        // Few prefixes: choose p of them without replacement.
        let mut all: Vec<usize> = (0..distinct as usize).collect();
        all.shuffle(rng);
        for code in all.into_iter().take(p) {
            let mut r = Route::random(gates, copies, rng);
            let mut c = code;
            for g in r.0[..prefix].iter_mut() {
                *g = (c % copies) as u8;
                c /= copies;
            }
            routes.push(r);
        }
    } else {
        // Many prefixes: rejection sampling almost never rejects.
        while routes.len() < p {
            let r = Route::random(gates, copies, rng);
            if routes.iter().all(|q| q.0[..prefix] != r.0[..prefix]) {
                routes.push(r);
            }
        }
    }
    routes
}

/// The `k` distinct random paths that `flag K` asks of a network with `gates` gated blocks of
/// `copies` choices ([`sample_distinct`] over every gate), or an error naming `flag` when the
/// network has fewer than `k` distinct paths (drawing would silently give fewer, or repeat
/// some: every command that asks for K distinct paths draws them here).
pub fn distinct_paths(
    gates: usize,
    copies: usize,
    k: usize,
    flag: &str,
    rng: &mut Rng,
) -> Result<Vec<Route>> {
    // None: more paths than a u128 counts.
    let total = u32::try_from(gates).ok().and_then(|g| (copies as u128).checked_pow(g));
    if let Some(total) = total.filter(|&t| t < k as u128) {
        return Err(Error::config(format!(
            "{flag} {k}: this RGN has only {total} distinct path{}",
            if total == 1 { "" } else { "s" }
        )));
    }
    Ok(sample_distinct(gates, copies, gates, k, rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{Seed, Stream};

    #[test]
    fn display_parse_round_trip() {
        let r: Route = "0,1,1,0".parse().unwrap();
        assert_eq!(r.to_string(), "0,1,1,0");
        assert!("0,x".parse::<Route>().is_err());
        assert!(r.check(3, 2).is_err());
        assert!(r.check(4, 2).is_ok());
        assert!(Route(vec![2]).check(1, 2).is_err());
    }

    #[test]
    fn distinct_paths_are_all_distinct_or_an_error() {
        let mut rng = Seed(1).rng(Stream::Route, 0, 0);
        let rs = distinct_paths(2, 2, 4, "--paths", &mut rng).unwrap();
        let mut seen: Vec<_> = rs.iter().map(|r| r.0.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        let e = distinct_paths(1, 2, 5, "--paths", &mut rng).unwrap_err().to_string();
        assert_eq!(e, "--paths 5: this RGN has only 2 distinct paths");
        assert_eq!(distinct_paths(21, 2, 3, "-k", &mut rng).unwrap().len(), 3);
        assert_eq!(distinct_paths(100, 3, 3, "-k", &mut rng).unwrap().len(), 3, "no overflow");
    }

    #[test]
    fn distinct_prefixes_and_cap() {
        let mut rng = Seed(1).rng(Stream::Route, 0, 0);
        for prefix in [1usize, 2, 5, 21] {
            for _ in 0..200 {
                let rs = sample_distinct(21, 2, prefix, 3, &mut rng);
                let want = if prefix == 1 { 2 } else { 3 };
                assert_eq!(rs.len(), want, "p capped at 2^prefix");
                for i in 0..rs.len() {
                    for j in 0..i {
                        assert_ne!(rs[i].0[..prefix], rs[j].0[..prefix]);
                    }
                }
            }
        }
    }
}
