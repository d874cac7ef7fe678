//! Grandfathers: a node whose only provider of a video is one neighbour asks that parent for
//! its own providers (our grandfathers) and keeps the list current through updates; when the
//! parent dies with no other route left, the failover dials them ([`super::upstream`]). On the
//! parent's side it answers such requests and tells every child that asked whenever its own
//! providers change, so grandchildren never hold a stale list.

use std::collections::{BTreeMap, BTreeSet};

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
