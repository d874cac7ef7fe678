//! Choice of parents, pure over the flood [`Routing`] table: among servers offering a video
//! the one with the smallest skew-free link sum (near-equal paths: fewer hops), towards it the
//! neighbour with the smallest delay; for a redundant stream the second parent sharing the
//! fewest relays with the parent's route. Never a member of our own subtree, a refused
//! neighbour, a draining one, or one without a link.

use std::collections::BTreeSet;

use super::stream::*;
use super::*;

/// A chosen parent: neighbour and the server it leads to.
pub(super) struct Choice {
    pub neighbour: String,
    pub server: String,
}

/// The route metric through `neighbour` towards `server`: (EWMA delay µs, link sum µs).
pub(super) fn metric(
    routing: &Routing,
    server: Option<&str>,
    neighbour: &str,
) -> (Option<i64>, Option<u64>) {
    let route = server
        .and_then(|s| routing.servers().get(s))
        .and_then(|s| s.parents.get(neighbour));
    (
        route.map(|r| r.delay_us as i64),
        route.map(|r| r.link_sum_us),
    )
}

/// The route towards `server` through `neighbour`, if the floods still offer it.
pub(super) fn route_of<'a>(
    routing: &'a Routing,
    server: Option<&str>,
    neighbour: &str,
) -> Option<&'a Route> {
    routing.servers().get(server?)?.parents.get(neighbour)
}

/// The second parent of a redundant stream: a usable neighbour, other than the parent and the
/// switch target, with a route to the parent's server (same server, so both feeds number the
/// chunks alike) that does not run through the parent nor through our subtree. Among them the
/// one sharing the fewest relays with the parent's route (from the floods' visited lists),
/// then the fastest. Returns the choice and the number of shared relays.
pub(super) fn choose_second(ctx: &Ctx<'_>, video: &str, st: &Stream) -> Option<(Choice, usize)> {
    let parent = st.parent.as_ref()?;
    let server = parent.server.as_deref()?;
    let routes = ctx.routing.servers().get(server)?;
    if !routes.offers(video) {
        return None;
    }
    // Relays of a route: its visited list without the server.
    let relays = |r: &Route| -> BTreeSet<String> { r.visited.iter().skip(1).cloned().collect() };
    let primary = routes
        .parents
        .get(&parent.name)
        .map(relays)
        .unwrap_or_else(|| BTreeSet::from([parent.name.clone()]));
    let down = st.downstream();
    routes
        .parents
        .iter()
        .filter(|(n, r)| {
            n.as_str() != parent.name
                && !st.is_pending(n)
                && n.as_str() != ctx.me
                && !down.contains(n.as_str())
                && !st.refused.get(*n).is_some_and(|until| *until > ctx.now)
                && ctx.neighbours.by_name(n).is_some_and(|nb| !nb.draining)
                && !r.visited.contains(&parent.name)
                && !r.visited.iter().any(|v| down.contains(v.as_str()))
        })
        .map(|(n, r)| (relays(r).intersection(&primary).count(), r.delay_us, n))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(b.2)))
        .map(|(shared, _, n)| {
            (
                Choice {
                    neighbour: n.clone(),
                    server: server.to_string(),
                },
                shared,
            )
        })
}

/// The best usable parent for a stream: among servers offering the video, the one with the
/// smallest skew-free `link_sum_us`; towards it, the neighbour with the smallest delay.
pub(super) fn choose(ctx: &Ctx<'_>, video: &str, st: &Stream) -> Option<Choice> {
    choose_among(ctx, video, st, |_, _| true)
}

/// The best usable parent other than `avoid` whose route does not run through it (a
/// suspected parent: a path through it would stall with it).
pub(super) fn choose_avoiding(
    ctx: &Ctx<'_>,
    video: &str,
    st: &Stream,
    avoid: &str,
) -> Option<Choice> {
    choose_among(ctx, video, st, |n, r| {
        n != avoid && !r.visited.iter().any(|v| v == avoid)
    })
}

/// [`choose`] over the routes `ok` accepts (`ok` gets the neighbour and its route).
pub(super) fn choose_among(
    ctx: &Ctx<'_>,
    video: &str,
    st: &Stream,
    ok: impl Fn(&str, &Route) -> bool,
) -> Option<Choice> {
    let down = st.downstream();
    let usable = |n: &str, r: &Route| {
        n != ctx.me
            && !down.contains(n)
            && !st.refused.get(n).is_some_and(|until| *until > ctx.now)
            && ctx.neighbours.by_name(n).is_some_and(|nb| !nb.draining)
            && ok(n, r)
    };
    // Differences under the switch floor are measurement noise (on a LAN or loopback every
    // path is a fraction of a millisecond): among routes that close, the one with fewer hops
    // wins, so near-equal paths do not pick long detours or flap with scheduling jitter.
    let floor_us = ctx.cfg.switch_floor.as_micros() as f64;
    let servers: Vec<(u64, usize, &str)> = ctx
        .routing
        .offers(video)
        .filter_map(|(server, routes)| {
            let usable_routes = routes.parents.iter().filter(|(n, r)| usable(n, r));
            let ls = usable_routes.clone().map(|(_, r)| r.link_sum_us).min()?;
            let hops = usable_routes.map(|(_, r)| r.visited.len()).min()?;
            Some((ls, hops, server))
        })
        .collect();
    let best_ls = servers.iter().map(|(ls, _, _)| *ls).min()?;
    let (_, _, server) = servers
        .iter()
        .filter(|(ls, _, _)| (*ls as f64) <= best_ls as f64 + floor_us)
        .min_by_key(|(ls, hops, server)| (*hops, *ls, *server))?;
    let routes = &ctx.routing.servers()[*server];
    let parents: Vec<_> = routes
        .parents
        .iter()
        .filter(|(n, r)| usable(n, r))
        .collect();
    let best_delay = parents
        .iter()
        .map(|(_, r)| r.delay_us)
        .min_by(|a, b| a.total_cmp(b))?;
    let (neighbour, _) = parents
        .into_iter()
        .filter(|(_, r)| r.delay_us <= best_delay + floor_us)
        .min_by(|(an, a), (bn, b)| {
            a.visited
                .len()
                .cmp(&b.visited.len())
                .then(a.delay_us.total_cmp(&b.delay_us))
                .then(a.link_sum_us.cmp(&b.link_sum_us))
                .then(an.cmp(bn))
        })?;
    Some(Choice {
        neighbour: neighbour.clone(),
        server: server.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;

    fn choice(h: &mut Harness, st: &Stream) -> Option<(String, String)> {
        h.run(|_, ctx| choose(ctx, "v", st))
            .map(|c| (c.neighbour, c.server))
    }

    #[test]
    fn the_nearest_server_wins_and_near_equal_paths_take_fewer_hops() {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S1", &[], "A", 20, &["v"]);
        h.flood("S2", &[], "X", 5, &["v"]);
        let st = Stream::new();
        assert_eq!(choice(&mut h, &st), Some(("X".into(), "S2".into())));

        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &["R1", "R2"], "A", 5, &["v"]);
        // Half a millisecond slower (under the switch floor) but two hops shorter.
        h.flood("S", &[], "X", 5, &["v"]);
        let ls = |h: &Harness, n: &str| h.routing.servers()["S"].parents[n].link_sum_us;
        assert_eq!(ls(&h, "A"), ls(&h, "X"));
        assert_eq!(choice(&mut h, &st), Some(("X".into(), "S".into())));
    }

    #[test]
    fn never_a_member_of_our_subtree_a_refused_or_an_unlinked_neighbour() {
        let mut h = Harness::new("B");
        for n in ["A", "X", "Y"] {
            h.link(n);
        }
        h.flood("S", &[], "A", 5, &["v"]);
        h.flood("S", &[], "X", 6, &["v"]);
        h.flood("S", &[], "Y", 7, &["v"]);
        let mut st = Stream::new();
        st.children.insert("C".into(), vec!["A".into(), "C".into()]);
        assert_eq!(choice(&mut h, &st).map(|c| c.0), Some("X".into()));
        st.refused.insert("X".into(), h.now + h.cfg.refuse_hold);
        assert_eq!(choice(&mut h, &st).map(|c| c.0), Some("Y".into()));
        h.neighbours
            .link_down(h.now, h.neighbours.by_name("Y").unwrap().link, "test");
        assert_eq!(choice(&mut h, &st), None);
        // A refusal that ran out no longer counts.
        h.advance(h.cfg.refuse_hold);
        assert_eq!(choice(&mut h, &st).map(|c| c.0), Some("X".into()));
    }

    #[test]
    fn a_second_parent_shares_as_few_relays_with_the_parent_as_it_can() {
        let mut h = Harness::new("B");
        for n in ["A", "X", "Y"] {
            h.link(n);
        }
        h.flood("S", &["R"], "A", 5, &["v"]);
        h.flood("S", &["R"], "X", 6, &["v"]);
        h.flood("S", &["Q"], "Y", 9, &["v"]);
        let mut st = Stream::new();
        st.parent = Some(Upstream::new("A", Some("S".into()), h.now));
        let second = h.run(|_, ctx| choose_second(ctx, "v", &st));
        let (c, shared) = second.expect("a second parent");
        assert_eq!((c.neighbour.as_str(), shared), ("Y", 0));
    }
}
