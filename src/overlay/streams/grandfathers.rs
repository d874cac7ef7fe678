//! Grandfathers: a node whose only provider of a video is one neighbour asks that parent for
//! its own providers (our grandfathers) and keeps the list current through updates; when the
//! parent dies with no other route left, the failover dials them ([`super::upstream`]), and
//! when it drains we move to one make-before-break while it still feeds us. On the
//! parent's side it answers such requests and tells every child that asked whenever its own
//! providers change, so grandchildren never hold a stale list.

use std::collections::{BTreeMap, BTreeSet};

use tracing::info;

use super::stream::Upstream;
use super::*;
use crate::wire::overlay::{GrandfatherRequest, Grandfathers, OverlayMsg, PeerAddr};

/// Grandfather bookkeeping on the parent side: who asked, and what they were told last.
#[derive(Debug, Default)]
pub(super) struct GfWatch {
    pub(super) told: BTreeMap<String, Vec<PeerAddr>>,
}

impl Streams {
    /// Our providers of `video` as grandfathers for `asker`.
    pub(super) fn providers_for(&self, ctx: &Ctx<'_>, video: &str, asker: &str) -> Vec<PeerAddr> {
        let mut names: Vec<&str> = Vec::new();
        let st = self.streams.get(video);
        if st.is_some_and(|s| s.source.is_some()) {
            return Vec::new();
        }
        if let Some(st) = st {
            names.extend(st.upstreams().map(|u| u.name.as_str()));
        }
        names.extend(ctx.routing.providers(video));
        let mut seen = BTreeSet::new();
        names
            .into_iter()
            .filter(|n| *n != asker && *n != ctx.me && seen.insert(*n))
            .filter_map(|n| {
                ctx.neighbours.by_name(n).map(|nb| PeerAddr {
                    name: n.to_string(),
                    addr: nb.listen_addr,
                })
            })
            .collect()
    }

    pub(crate) fn on_grandfather_request(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
        let list = self.providers_for(ctx, video, from);
        self.gf_watch
            .entry(video.to_string())
            .or_default()
            .told
            .insert(from.to_string(), list.clone());
        ctx.send(
            from,
            OverlayMsg::GrandfatherReply(Grandfathers {
                video: video.to_string(),
                grandfathers: list,
            }),
        );
    }

    pub(crate) fn on_grandfathers(&mut self, ctx: &mut Ctx<'_>, from: &str, gf: Grandfathers) {
        let Some(st) = self.streams.get_mut(&gf.video) else {
            return;
        };
        if st.is_parent(from) {
            st.grandfathers = gf
                .grandfathers
                .into_iter()
                .filter(|p| p.name != ctx.me)
                .collect();
        }
    }

    /// Ask the parent for its providers when it is our only one.
    pub(super) fn ask_grandfathers(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(parent) = st.parent.as_ref().map(|p| p.name.clone()) else {
            return;
        };
        if st.gf_asked.as_deref() == Some(parent.as_str()) {
            return;
        }
        let others = ctx
            .routing
            .providers(video)
            .into_iter()
            .any(|n| n != parent && ctx.neighbours.by_name(n).is_some());
        if others {
            return;
        }
        st.gf_asked = Some(parent.clone());
        ctx.send(
            &parent,
            OverlayMsg::GrandfatherRequest(GrandfatherRequest {
                video: video.to_string(),
            }),
        );
    }

    /// Our only parent of `video`, `draining`, is shutting down and no other neighbour offers
    /// the video: move make-before-break to a grandfather while the parent still feeds us —
    /// at once when we have a link to it, else once the dial succeeds
    /// ([`Streams::neighbour_up`]). False when no grandfather is known.
    pub(super) fn drain_to_grandfather(
        &mut self,
        ctx: &mut Ctx<'_>,
        video: &str,
        draining: &str,
    ) -> bool {
        let Some(st) = self.streams.get_mut(video) else {
            return false;
        };
        let down: Vec<String> = st.downstream().into_iter().map(str::to_string).collect();
        let gfs: Vec<PeerAddr> = st
            .grandfathers
            .iter()
            .filter(|g| g.name != ctx.me && g.name != draining && !down.contains(&g.name))
            .cloned()
            .collect();
        if let Some(gf) = gfs.iter().find(|g| ctx.linked(&g.name)) {
            info!(video, parent = %draining, grandfather = %gf.name, "parent draining: make-before-break to a grandfather");
            st.pending = Some(Upstream::new(&gf.name, None, ctx.now));
            let name = gf.name.clone();
            self.request(ctx, video, &name);
            return true;
        }
        for gf in &gfs {
            info!(video, parent = %draining, grandfather = %gf.name, addr = %gf.addr, "parent draining: dialling a grandfather");
            ctx.push(StreamAction::Want(gf.addr));
            st.gf_dialing.insert(gf.name.clone(), gf.addr);
            counters_of(&mut self.counters, video).grandfather_dials += 1;
        }
        !gfs.is_empty()
    }

    /// Tell children that asked whenever our providers changed.
    pub(super) fn update_grandchildren(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.gf_watch.keys().cloned().collect();
        for video in videos {
            let askers: Vec<String> = self.gf_watch[&video].told.keys().cloned().collect();
            for asker in askers {
                let list = self.providers_for(ctx, &video, &asker);
                // An empty list helps nobody: the asker keeps the stale one until we know better.
                if list.is_empty() || self.gf_watch[&video].told[&asker] == list {
                    continue;
                }
                ctx.send(
                    &asker,
                    OverlayMsg::GrandfatherUpdate(Grandfathers {
                        video: video.clone(),
                        grandfathers: list.clone(),
                    }),
                );
                if let Some(w) = self.gf_watch.get_mut(&video) {
                    w.told.insert(asker, list);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{Did, Harness};
    use super::*;

    /// B subscribes to v through A, its only provider, which it asks for its providers (a
    /// grandfather request) and which names G; returns the harness and G.
    fn b_below_a_with_grandfather_g() -> (Harness, PeerAddr) {
        let mut h = Harness::new("B");
        h.link("A");
        h.flood("S", &["G"], "A", 5, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        assert!(h.sent().contains(&("A".into(), "grandfather_request")));
        let g = PeerAddr {
            name: "G".into(),
            addr: Harness::addr_of("G"),
        };
        let reply = Grandfathers {
            video: "v".into(),
            grandfathers: vec![g.clone()],
        };
        h.run(|s, ctx| s.on_grandfathers(ctx, "A", reply));
        (h, g)
    }

    #[test]
    fn an_only_parent_is_asked_for_its_providers_and_they_are_dialled_when_it_dies() {
        let (mut h, g) = b_below_a_with_grandfather_g();
        assert_eq!(h.streams.grandfathers("v"), std::slice::from_ref(&g));
        h.unlink("A");
        assert_eq!(h.did(), [Did::Other(StreamAction::Want(g.addr))]);
        assert_eq!(
            h.streams.counters("v").map(|c| c.grandfather_dials),
            Some(1)
        );
        h.link("G");
        h.run(|s, ctx| s.neighbour_up(ctx, "G"));
        let did = h.did();
        assert!(did.contains(&Did::Other(StreamAction::Unwant(g.addr))));
        assert!(did.iter().any(|d| matches!(d,
            Did::Send(to, OverlayMsg::VideoRequest(_)) if to == "G")));
        assert_eq!(h.streams.parent("v"), Some("G"));
    }

    #[test]
    fn an_only_parent_that_drains_is_left_for_a_grandfather_make_before_break() {
        let (mut h, g) = b_below_a_with_grandfather_g();
        h.chunk("A", "v", 1, 1);
        h.did();
        // A drains: G is dialled while A still feeds us.
        let link = h.neighbours.by_name("A").unwrap().link;
        h.neighbours.set_draining(link);
        h.run(|s, ctx| s.neighbour_draining(ctx, "A"));
        assert_eq!(h.did(), [Did::Other(StreamAction::Want(g.addr))]);
        h.chunk("A", "v", 1, 2);
        assert_eq!(h.drain().1, [(1, 2)]);
        // G answers the dial: asked as the switch target, A still the parent.
        h.link("G");
        h.run(|s, ctx| s.neighbour_up(ctx, "G"));
        let did = h.did();
        assert!(did.contains(&Did::Other(StreamAction::Unwant(g.addr))));
        assert!(did.iter().any(|d| matches!(d,
            Did::Send(to, OverlayMsg::VideoRequest(r)) if to == "G" && r.has == Some((1, 2)))));
        assert_eq!(h.streams.parent("v"), Some("A"));
        // G catches up with A: the switch completes, A is cancelled; nothing twice.
        h.chunk("A", "v", 1, 3);
        h.chunk("G", "v", 1, 3);
        h.chunk("G", "v", 1, 4);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, 3), (1, 4)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("G"));
    }

    #[test]
    fn a_child_that_asked_is_told_when_our_providers_change() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &["C"]);
        h.request_from("C");
        h.sent();
        h.run(|s, ctx| s.on_grandfather_request(ctx, "C", "v"));
        let told = |h: &mut Harness| -> Vec<Vec<String>> {
            h.did()
                .into_iter()
                .filter_map(|d| match d {
                    Did::Send(to, OverlayMsg::GrandfatherReply(g))
                    | Did::Send(to, OverlayMsg::GrandfatherUpdate(g))
                        if to == "C" =>
                    {
                        Some(g.grandfathers.into_iter().map(|p| p.name).collect())
                    }
                    _ => None,
                })
                .collect()
        };
        assert_eq!(told(&mut h), [vec!["A".to_string()]]);
        h.link("Y");
        h.flood("S", &[], "Y", 7, &["v"]);
        h.run(|s, ctx| s.reconcile(ctx));
        assert_eq!(told(&mut h), [vec!["A".to_string(), "Y".to_string()]]);
        // Nothing changed: nothing is sent.
        h.run(|s, ctx| s.reconcile(ctx));
        assert_eq!(told(&mut h), Vec::<Vec<String>>::new());
    }
}
