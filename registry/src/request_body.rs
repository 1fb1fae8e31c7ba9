//! The request body every handler reads: any `http_body::Body` of bytes
//! (hyper's `Incoming` in the server, a whole buffer in fuzzing and unit
//! tests), behind a deadline so that a client cannot hold a connection,
//! an upload session and its staging bytes by sending slowly.
//!
//! The deadline moves forward with every frame: the body fails once it has
//! been silent for `idle`, or once, after `grace`, it has averaged less
//! than `min_rate` bytes per second. A slow but steady upload passes; one
//! byte every few seconds does not.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How slow a request body may be before it is cut off.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest silence between two frames.
    pub idle: Duration,
    /// Bytes per second the body must average once `grace` has passed.
    pub min_rate: u64,
    /// Start-up allowance before the average rate counts.
    pub grace: Duration,
}

impl Default for BodyPace {
    fn default() -> Self {
        BodyPace {
            idle: Duration::from_secs(30),
            min_rate: 1024,
            grace: Duration::from_secs(30),
        }
    }
}

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body was idle for more than {0:?}")]
    Idle(Duration),
    #[error("the request body arrived slower than {min_rate} bytes/s on average ({received} bytes in {elapsed:?})")]
    TooSlow {
        min_rate: u64,
        received: u64,
        elapsed: Duration,
    },
    #[error("{0}")]
    Transport(BoxError),
}

pub struct RequestBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    pace: Option<Pacer>,
}

struct Pacer {
    pace: BodyPace,
    started: Instant,
    received: u64,
    sleep: Pin<Box<Sleep>>,
}

impl Pacer {
    fn new(pace: BodyPace) -> Pacer {
        let started = Instant::now();
        let mut p = Pacer {
            pace,
            started,
            received: 0,
            sleep: Box::pin(tokio::time::sleep_until(started + pace.idle)),
        };
        p.rearm();
        p
    }

    /// The earlier of "silent too long" and "too slow on average".
    fn deadline(&self) -> (Instant, bool) {
        let idle = Instant::now() + self.pace.idle;
        if self.pace.min_rate == 0 {
            return (idle, true);
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.pace.min_rate as f64);
        let rate = self.started + self.pace.grace + earned;
        if rate < idle {
            (rate, false)
        } else {
            (idle, true)
        }
    }

    fn rearm(&mut self) {
        let (at, _) = self.deadline();
        self.sleep.as_mut().reset(at);
    }

    fn expired(&self) -> BodyError {
        let (_, idle) = self.deadline();
        if idle {
            BodyError::Idle(self.pace.idle)
        } else {
            BodyError::TooSlow {
                min_rate: self.pace.min_rate,
                received: self.received,
                elapsed: self.started.elapsed(),
            }
        }
    }
}

impl RequestBody {
    /// Wraps `body`; with `pace`, enforces it (needs a tokio runtime).
    pub fn new<B>(body: B, pace: Option<BodyPace>) -> RequestBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        RequestBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            pace: pace.map(Pacer::new),
        }
    }

    /// A whole body already in memory (tests, fuzzing).
    pub fn full(bytes: impl Into<Bytes>) -> RequestBody {
        RequestBody::new(http_body_util::Full::new(bytes.into()), None)
    }

    pub fn empty() -> RequestBody {
        RequestBody::full(Bytes::new())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = this.pace.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        p.received += data.len() as u64;
                    }
                    p.rearm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Transport(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.pace.as_mut() {
                Some(p) => match p.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(p.expired()))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn trickle(
        gaps: Vec<Duration>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        let s = stream::unfold(gaps.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                gaps,
            ))
        });
        StreamBody::new(s)
    }

    async fn read_all(mut b: RequestBody) -> Result<u64, BodyError> {
        let mut n = 0;
        while let Some(f) = b.frame().await {
            n += f?.data_ref().map_or(0, |d| d.len() as u64);
        }
        Ok(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_times_out() {
        let pace = BodyPace {
            idle: Duration::from_secs(5),
            min_rate: 0,
            grace: Duration::ZERO,
        };
        let body = RequestBody::new(
            trickle(vec![Duration::from_secs(1), Duration::from_secs(6)]),
            Some(pace),
        );
        assert!(matches!(read_all(body).await, Err(BodyError::Idle(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_idle_limit_still_fails_the_rate() {
        let pace = BodyPace {
            idle: Duration::from_secs(5),
            min_rate: 100,
            grace: Duration::from_secs(10),
        };
        let body = RequestBody::new(trickle(vec![Duration::from_secs(4); 20]), Some(pace));
        assert!(matches!(
            read_all(body).await,
            Err(BodyError::TooSlow { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_passes() {
        let pace = BodyPace {
            idle: Duration::from_secs(5),
            min_rate: 1,
            grace: Duration::from_secs(1),
        };
        let body = RequestBody::new(trickle(vec![Duration::from_millis(500); 20]), Some(pace));
        assert_eq!(read_all(body).await.unwrap(), 20);
    }
}
