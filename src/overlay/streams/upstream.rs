//! Upstream: who feeds each stream. A stream with consumers starts our own source or asks the
//! best parent ([`super::choice`]); a lost parent (death, refusal, loop) is replaced at once by
//! the second parent, the switch target, the next-best parent, or the grandfathers, in that
//! order; with none left the children are told so they move on. Link events (a neighbour up or
//! down or draining, a failed dial) and route changes arrive here.

use std::net::SocketAddr;

use tracing::info;

use super::choice::*;
use super::stream::*;
use super::*;
use crate::wire::overlay::VideoCancel;

impl Streams {
    /// Make sure a stream with consumers is fed: start our source, or ask the best parent.
    /// `refuse` answers children with [`VideoUnavailable`] when servers offer the video but
    /// no usable parent leads to one.
    pub(super) fn activate(&mut self, ctx: &mut Ctx<'_>, video: &str, refuse: bool) {
        let local = self.local_videos.iter().any(|v| v == video);
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if st.consumers() == 0 {
            return;
        }
        st.linger_until = None;
        if local {
            if st.source.is_none() {
                let last = self.last_epoch.get(video).copied().unwrap_or(0);
                let epoch = ctx.wall_us.max(last + 1);
                self.last_epoch.insert(video.to_string(), epoch);
                st.source = Some((epoch, 0));
                info!(video, epoch, "stream started at its source");
                ctx.push(StreamAction::SourceStart {
                    video: video.to_string(),
                });
            }
            return;
        }
        if st.parent.is_some() || !st.gf_dialing.is_empty() {
            return;
        }
        match choose(ctx, video, st) {
            Some(c) => {
                let (delay_us, link_sum_us) = metric(ctx.routing, Some(&c.server), &c.neighbour);
                info!(
                    video, parent = %c.neighbour, server = %c.server, delay_us, link_sum_us,
                    "parent chosen"
                );
                self.adopt_parent(ctx, video, c, (delay_us, link_sum_us));
            }
            None => {
                let offered = ctx.routing.offers(video).next().is_some();
                if refuse && offered {
                    self.refuse_children(ctx, video);
                }
            }
        }
    }

    /// Take `c` as the parent of `video`: ask it for the video, and learn its own parents
    /// (our grandfathers) anew.
    pub(super) fn adopt_parent(
        &mut self,
        ctx: &mut Ctx<'_>,
        video: &str,
        c: Choice,
        metric: (Option<i64>, Option<u64>),
    ) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.parent = Some(Upstream {
            metric,
            ..Upstream::new(&c.neighbour, Some(c.server), ctx.now)
        });
        st.gf_asked = None;
        st.grandfathers.clear();
        st.spacing.restart();
        self.request(ctx, video, &c.neighbour);
        self.ask_grandfathers(ctx, video);
    }

    /// The parent is gone (death, refusal, loop): the switch target takes over, else the
    /// next-best parent, else the grandfathers; with none, children are told. Counted as a
    /// failover when it had fed us, else as a retry of the request.
    pub(super) fn failover(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        self.upstreams_changed = true;
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let old = st.parent.take();
        if st.source.is_some() || st.consumers() == 0 {
            self.release_if_unused(ctx, video);
            return;
        }
        let counters = counters_of(&mut self.counters, video);
        if old.as_ref().is_some_and(|o| o.last_data.is_some()) {
            counters.failovers += 1;
        } else {
            counters.parent_retries += 1;
        }
        if let Some(second) = st.second.take() {
            // Hitless: the second parent already feeds us; it becomes the parent, and the
            // merge stops waiting for the dead feed. A new second parent is sought by
            // `reconcile`.
            info!(
                video, old_parent = ?old.as_ref().map(|o| o.name.as_str()),
                parent = %second.name, "failover: parent lost, second parent takes over (hitless)"
            );
            st.parent = Some(second);
            st.gf_asked = None;
            st.grandfathers.clear();
            counters_of(&mut self.counters, video).hitless_failovers += 1;
            self.drain_merge(ctx, video);
            self.ask_grandfathers(ctx, video);
            return;
        }
        if st.pending.is_some() {
            self.complete_switch(ctx, video);
            return;
        }
        if let Some(c) = choose(ctx, video, st) {
            let (delay_us, link_sum_us) = metric(ctx.routing, Some(&c.server), &c.neighbour);
            info!(
                video, old_parent = ?old.as_ref().map(|o| o.name.as_str()),
                old_delay_us = ?old.as_ref().and_then(|o| o.metric.0),
                old_link_sum_us = ?old.as_ref().and_then(|o| o.metric.1),
                parent = %c.neighbour, server = %c.server, delay_us, link_sum_us,
                "failover: parent lost, next-best parent asked"
            );
            self.adopt_parent(ctx, video, c, (delay_us, link_sum_us));
            return;
        }
        // Catastrophic: our only provider died. Its own providers are our grandfathers.
        let gfs = std::mem::take(&mut st.grandfathers);
        let down = st
            .downstream()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        for gf in gfs {
            if gf.name == ctx.me || down.contains(&gf.name) {
                continue;
            }
            if ctx.linked(&gf.name) {
                info!(video, grandfather = %gf.name, "failover: only parent lost, asking a grandfather");
                st.gf_dialing.clear();
                st.parent = Some(Upstream::new(&gf.name, None, ctx.now));
                self.request(ctx, video, &gf.name);
                return;
            }
            info!(video, grandfather = %gf.name, addr = %gf.addr, "failover: only parent lost, dialling a grandfather");
            ctx.push(StreamAction::Want(gf.addr));
            st.gf_dialing.insert(gf.name, gf.addr);
            counters_of(&mut self.counters, video).grandfather_dials += 1;
        }
        if st.gf_dialing.is_empty() {
            info!(
                video,
                "failover: no parent and no grandfather left; children told"
            );
            self.refuse_children(ctx, video);
        }
    }

    pub(crate) fn neighbour_up(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        let videos: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.gf_dialing.contains_key(name))
            .map(|(v, _)| v.clone())
            .collect();
        for video in videos {
            let st = self.streams.get_mut(&video).expect("listed");
            for addr in std::mem::take(&mut st.gf_dialing).into_values() {
                ctx.push(StreamAction::Unwant(addr));
            }
            if st.parent.is_none() {
                // The first grandfather to answer the dial wins; the others are let go.
                info!(video, parent = %name, "grandfather connected, asked for the stream");
                st.parent = Some(Upstream::new(name, None, ctx.now));
                self.request(ctx, &video, name);
            } else if st.pending.is_none() {
                // Dialled while the parent drains: it still feeds us, make-before-break.
                info!(video, parent = %name, "grandfather connected, switching to it (make-before-break)");
                st.pending = Some(Upstream::new(name, None, ctx.now));
                self.request(ctx, &video, name);
            }
        }
        self.reconcile(ctx);
    }

    /// A neighbour's link was replaced by a duplicate (both ends keep one of two links opened
    /// at once). What we sent on the losing link is lost if the peer closed it first, a
    /// request among it, which would leave us waiting for a parent that never heard us: ask
    /// again (a repeated request only updates the path).
    pub(crate) fn neighbour_relinked(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        let is = |u: &Option<Upstream>| u.as_ref().is_some_and(|u| u.name == name);
        let videos: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| is(&s.parent) || is(&s.pending) || is(&s.second))
            .map(|(v, _)| v.clone())
            .collect();
        for video in videos {
            self.request(ctx, &video, name);
            let st = self.streams.get_mut(&video).expect("listed");
            if st.gf_asked.as_deref() == Some(name) {
                st.gf_asked = None;
                self.ask_grandfathers(ctx, &video);
            }
        }
    }

    pub(crate) fn neighbour_down(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        for w in self.gf_watch.values_mut() {
            w.told.remove(name);
        }
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in videos {
            let Some(st) = self.streams.get_mut(&video) else {
                continue;
            };
            if st.children.remove(name).is_some() {
                if st.consumers() == 0 {
                    self.release_if_unused(ctx, &video);
                    continue;
                }
                self.send_path_update(ctx, &video);
            }
            let st = self.streams.get_mut(&video).expect("present");
            if st.is_pending(name) {
                st.pending = None;
                st.held.clear();
            }
            if st.is_second(name) {
                info!(video, second = %name, "second parent lost; the parent keeps feeding");
                st.second = None;
            }
            if st.is_parent(name) {
                self.failover(ctx, &video);
            }
            self.drain_merge(ctx, &video);
        }
    }

    /// `name` is draining (it will exit soon): every stream it feeds moves elsewhere while it
    /// still feeds — the parent by a make-before-break switch (completed as soon as the new
    /// path delivers, ahead or behind, so nothing is lost), a second parent by the other feed
    /// taking over; a switch towards it is let go. With nowhere else to go a stream stays
    /// until the link goes.
    pub(crate) fn neighbour_draining(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in videos {
            let Some(st) = self.streams.get_mut(&video) else {
                continue;
            };
            if st.is_pending(name) {
                self.abandon_switch(ctx, &video, false);
            }
            let st = self.streams.get_mut(&video).expect("present");
            if st.is_second(name) {
                info!(video, second = %name, "second parent draining: let go");
                st.second = None;
                self.upstreams_changed = true;
                ctx.send(
                    name,
                    OverlayMsg::VideoCancel(VideoCancel {
                        video: video.clone(),
                    }),
                );
                self.drain_merge(ctx, &video);
            }
            let st = self.streams.get_mut(&video).expect("present");
            if !st.is_parent(name) || st.pending.is_some() {
                continue;
            }
            if let Some(second) = st.second.take() {
                // The other feed already carries every chunk: it takes over.
                info!(video, old_parent = %name, parent = %second.name, "parent draining: second parent takes over");
                st.parent = Some(second);
                st.gf_asked = None;
                st.grandfathers.clear();
                self.upstreams_changed = true;
                counters_of(&mut self.counters, &video).switches += 1;
                ctx.send(
                    name,
                    OverlayMsg::VideoCancel(VideoCancel {
                        video: video.clone(),
                    }),
                );
                self.drain_merge(ctx, &video);
                self.ask_grandfathers(ctx, &video);
                continue;
            }
            match choose(ctx, &video, st) {
                Some(c) => {
                    info!(video, parent = %name, to = %c.neighbour, "parent draining: make-before-break to another parent");
                    self.start_switch(ctx, &video, c);
                }
                None if self.drain_to_grandfather(ctx, &video, name) => {}
                None => {
                    info!(video, parent = %name, "parent draining and no other parent: staying until it goes");
                }
            }
        }
    }

    pub(crate) fn dial_failed(&mut self, ctx: &mut Ctx<'_>, addr: SocketAddr) {
        let videos: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.gf_dialing.values().any(|a| *a == addr))
            .map(|(v, _)| v.clone())
            .collect();
        for video in videos {
            let st = self.streams.get_mut(&video).expect("listed");
            st.gf_dialing.retain(|_, a| *a != addr);
            ctx.push(StreamAction::Unwant(addr));
            if st.gf_dialing.is_empty() && st.parent.is_none() {
                // Every grandfather failed: perhaps a route came meanwhile; else tell children.
                self.activate(ctx, &video, true);
                if self.streams.get(&video).is_some_and(|s| s.parent.is_none()) {
                    self.refuse_children(ctx, &video);
                }
            }
        }
    }

    /// Routes changed: feed waiting streams, refresh grandfathers.
    pub(crate) fn reconcile(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in &videos {
            self.activate(ctx, video, false);
            self.ensure_second(ctx, video);
            self.ask_grandfathers(ctx, video);
        }
        self.update_grandchildren(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;

    /// B streams "v" from A (X is the other way); A announces it drains.
    fn draining_parent() -> Harness {
        let mut h = Harness::with_routes("B", &[("A", 5), ("X", 10)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        h.chunk("A", "v", 1, 2);
        h.drain();
        let link = h.neighbours.by_name("A").unwrap().link;
        assert!(h.neighbours.set_draining(link));
        assert!(
            !h.neighbours.set_draining(link),
            "a repeated notice changes nothing"
        );
        h.run(|s, ctx| s.neighbour_draining(ctx, "A"));
        h
    }

    #[test]
    fn a_draining_parent_is_left_make_before_break_without_losing_a_chunk() {
        let mut h = draining_parent();
        let (sent, _) = h.drain();
        assert_eq!(sent, [("X".into(), "video_request")]);
        assert_eq!(h.streams.parent("v"), Some("A"));
        // A still feeds; X (behind) delivers a chunk already forwarded: the switch completes
        // at once instead of waiting for X to catch up.
        h.chunk("A", "v", 1, 3);
        h.chunk("X", "v", 1, 2);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, 3)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        h.chunk("X", "v", 1, 3);
        h.chunk("X", "v", 1, 4);
        assert_eq!(h.drain().1, [(1, 4)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.gap_chunks, c.switches, c.failovers), (0, 1, 0));
    }

    #[test]
    fn a_draining_parent_is_kept_until_a_new_path_ahead_of_it_catches_up() {
        let mut h = draining_parent();
        h.drain();
        // X ahead: held until A fills the hole, then the switch completes, in order.
        h.chunk("X", "v", 1, 4);
        assert_eq!(h.drain(), (vec![], vec![]));
        h.chunk("A", "v", 1, 3);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, 3), (1, 4)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.counters("v").unwrap().gap_chunks, 0);
    }

    #[test]
    fn a_draining_neighbour_is_never_chosen_and_a_lone_one_is_kept() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        h.drain();
        let link = h.neighbours.by_name("A").unwrap().link;
        h.neighbours.set_draining(link);
        h.run(|s, ctx| s.neighbour_draining(ctx, "A"));
        assert_eq!(h.drain(), (vec![], vec![]));
        assert_eq!(h.streams.parent("v"), Some("A"));
        // A new stream does not take it.
        h.run(|s, ctx| s.subscribe_local(ctx, "w"));
        h.flood("S", &[], "A", 5, &["v", "w"]);
        h.run(|s, ctx| s.routes_updated(ctx));
        assert_eq!(h.streams.parent("w"), None);
    }

    #[test]
    fn a_dead_parent_is_replaced_by_the_next_best_at_once() {
        let mut h = Harness::with_routes("B", &[("A", 5), ("X", 10)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        assert!(h.sent().contains(&("A".into(), "video_request")));
        assert_eq!(h.streams.parent("v"), Some("A"));
        h.chunk("A", "v", 1, 1);
        h.drain();
        h.unlink("A");
        assert!(h.sent().contains(&("X".into(), "video_request")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.failovers, c.parent_retries), (1, 0));
        // X dies before it fed anything: no flow broke, so a retry, not a failover.
        h.unlink("X");
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.failovers, c.parent_retries), (1, 1));
    }

    #[test]
    fn with_no_parent_and_no_grandfather_left_the_children_are_told() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &["C"]);
        h.request_from("C");
        h.sent();
        h.unlink("A");
        assert_eq!(h.sent(), [("C".into(), "video_unavailable")]);
        assert!(!h.streams.has("v"));
    }

    #[test]
    fn a_replaced_link_to_the_parent_repeats_the_request() {
        // The request may have gone out on the duplicate link the parent closed (seed 323 of
        // the fault simulation: the consumer waited for ever on a parent that never heard it).
        let mut h = Harness::with_routes("B", &[("A", 5), ("X", 10)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.sent();
        h.run(|s, ctx| s.neighbour_relinked(ctx, "A"));
        assert!(h.sent().contains(&("A".into(), "video_request")));
        assert_eq!(h.streams.parent("v"), Some("A"));
        // Another neighbour's link: nothing to repeat.
        h.run(|s, ctx| s.neighbour_relinked(ctx, "X"));
        assert!(h.sent().is_empty());
    }
}
