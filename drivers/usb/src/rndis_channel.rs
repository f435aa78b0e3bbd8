//! The control channel of an RNDIS function: an [`RndisSession`] driven over a transport that
//! sends a message (SEND_ENCAPSULATED_COMMAND) and fetches the device's next one
//! (GET_ENCAPSULATED_RESPONSE). Responses are polled for with a growing pause and a deadline,
//! because a device need not announce them: QEMU's interrupt endpoint never completes.
//! Everything the device says is untrusted: a stale or corrupt response is skipped (a few at
//! most), device-initiated messages met while waiting are handled (KEEPALIVE answered,
//! INDICATE_STATUS followed), and a completion refusing the request ends it.

use alloc::vec::Vec;
use core::fmt;

use crate::host::TransferError;
use crate::rndis::{
    self, DeviceInfo, Field, RndisError, RndisSession, SessionEvent, SessionState,
    MEDIA_STATE_CONNECTED, OID_GEN_MEDIA_CONNECT_STATUS, QUERY_CMPLT,
};

/// How long the device gets to queue the response to one control message.
pub const RESPONSE_TIMEOUT_US: u64 = 2_000_000;
/// First pause between two polls; it doubles up to [`RESPONSE_POLL_MAX_US`].
pub const RESPONSE_POLL_FIRST_US: u64 = 50;
pub const RESPONSE_POLL_MAX_US: u64 = 10_000;
/// Unusable responses (stale, corrupt) skipped while waiting for one request's completion.
pub const MAX_SKIPPED_RESPONSES: u32 = 8;
/// Device-initiated messages read at most by one [`ControlChannel::drain`].
pub const MAX_DRAINED_RESPONSES: u32 = 8;
/// Control silence after which the host sends KEEPALIVE (Linux and Windows use 5 s).
pub const KEEPALIVE_IDLE_US: u64 = 5_000_000;

/// What the channel needs from the USB side.
pub trait ControlTransport {
    /// SEND_ENCAPSULATED_COMMAND with `message`.
    fn send(&mut self, message: &[u8]) -> Result<(), TransferError>;
    /// GET_ENCAPSULATED_RESPONSE into `buffer` (wLength its length); the bytes read.
    fn fetch(&mut self, buffer: &mut [u8]) -> Result<usize, TransferError>;
    fn now_us(&self) -> u64;
    fn sleep_us(&mut self, us: u64);
}

/// Why a control exchange failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A control transfer failed (the device may be gone).
    Transfer {
        request: &'static str,
        step: &'static str,
        error: TransferError,
    },
    /// The device queued no completion in time.
    NoResponse {
        request: &'static str,
        waited_ms: u64,
    },
    /// The completion refused the request, or carried an unusable value.
    Refused {
        request: &'static str,
        error: RndisError,
    },
    /// Too many unusable responses while waiting.
    Unusable {
        request: &'static str,
        count: u32,
        last: RndisError,
    },
    /// The session cannot make this request now, or a completion of another kind came.
    Unexpected {
        request: &'static str,
        what: &'static str,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Transfer {
                request,
                step,
                error,
            } => write!(f, "{request}: {step}: {error}"),
            ChannelError::NoResponse { request, waited_ms } => {
                write!(f, "{request}: no response within {waited_ms} ms")
            }
            ChannelError::Refused { request, error } => write!(f, "{request} refused: {error}"),
            ChannelError::Unusable {
                request,
                count,
                last,
            } => write!(f, "{request}: {count} unusable responses, the last: {last}"),
            ChannelError::Unexpected { request, what } => write!(f, "{request}: {what}"),
        }
    }
}

/// What the channel counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlCounters {
    /// Responses that were stale, corrupt or unsolicited, dropped.
    pub responses_dropped: u64,
    /// Device KEEPALIVEs answered.
    pub device_keepalives: u64,
    /// Host KEEPALIVEs completed.
    pub host_keepalives: u64,
    /// Host KEEPALIVEs that failed (no answer, refused).
    pub keepalive_failures: u64,
    /// INDICATE_STATUS messages.
    pub indications: u64,
}

/// One RNDIS function's control channel.
pub struct ControlChannel<T> {
    transport: T,
    pub session: RndisSession,
    response: Vec<u8>,
    /// When the device last said something (for the keepalive).
    last_heard_us: u64,
    pub counters: ControlCounters,
}

/// The outcome of feeding one response to the session.
enum Consumed {
    /// The device had nothing queued.
    Nothing,
    /// A device-initiated message, handled.
    Handled,
    /// The pending request's completion.
    Completion(SessionEvent),
}

fn request_name(message: &[u8]) -> &'static str {
    rndis::message_name(rndis::message_type(message).unwrap_or(0))
}

impl<T: ControlTransport> ControlChannel<T> {
    pub fn new(transport: T, session: RndisSession) -> Self {
        let last_heard_us = transport.now_us();
        ControlChannel {
            transport,
            session,
            response: Vec::new(),
            last_heard_us,
            counters: ControlCounters::default(),
        }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn fetch(&mut self, request: &'static str) -> Result<(), ChannelError> {
        self.response
            .resize(usize::from(rndis::RESPONSE_BUFFER_LEN), 0);
        let len =
            self.transport
                .fetch(&mut self.response)
                .map_err(|error| ChannelError::Transfer {
                    request,
                    step: "GET_ENCAPSULATED_RESPONSE",
                    error,
                })?;
        self.response.truncate(len);
        Ok(())
    }

    fn send(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        self.transport
            .send(message)
            .map_err(|error| ChannelError::Transfer {
                request: request_name(message),
                step: "SEND_ENCAPSULATED_COMMAND",
                error,
            })
    }

    /// Feeds the fetched response to the session; answers a device KEEPALIVE.
    fn consume(&mut self) -> Result<Result<Consumed, RndisError>, ChannelError> {
        let event = match self.session.on_response(&self.response) {
            Ok(event) => event,
            Err(error) => {
                self.counters.responses_dropped += 1;
                return Ok(Err(error));
            }
        };
        if event != SessionEvent::NoResponse {
            self.last_heard_us = self.transport.now_us();
        }
        Ok(Ok(match event {
            SessionEvent::NoResponse => Consumed::Nothing,
            SessionEvent::Reply(reply) => {
                self.send(&reply)?;
                self.counters.device_keepalives += 1;
                Consumed::Handled
            }
            SessionEvent::Link(_) | SessionEvent::StatusIndication(_) => {
                self.counters.indications += 1;
                Consumed::Handled
            }
            completion => Consumed::Completion(completion),
        }))
    }

    /// Sends `request` and reads responses until the one completing it, pausing (growing from
    /// [`RESPONSE_POLL_FIRST_US`]) while the device has nothing queued, for at most
    /// [`RESPONSE_TIMEOUT_US`]. Device-initiated messages on the way are handled; at most
    /// [`MAX_SKIPPED_RESPONSES`] unusable ones are skipped; a refusal ends the request. On any
    /// failure the session gives the request up, so a late completion cannot wedge it.
    pub fn exchange(&mut self, request: Vec<u8>) -> Result<SessionEvent, ChannelError> {
        let result = self.exchange_once(request);
        if result.is_err() {
            self.session.abandon();
        }
        result
    }

    fn exchange_once(&mut self, request: Vec<u8>) -> Result<SessionEvent, ChannelError> {
        let name = request_name(&request);
        self.send(&request)?;
        let started = self.transport.now_us();
        let mut pause_us = RESPONSE_POLL_FIRST_US;
        let mut skipped = 0;
        loop {
            self.fetch(name)?;
            match self.consume()? {
                Ok(Consumed::Completion(event)) => return Ok(event),
                Ok(Consumed::Handled) => {}
                Ok(Consumed::Nothing) => {
                    let waited = self.transport.now_us().saturating_sub(started);
                    if waited >= RESPONSE_TIMEOUT_US {
                        return Err(ChannelError::NoResponse {
                            request: name,
                            waited_ms: waited / 1000,
                        });
                    }
                    self.transport.sleep_us(pause_us);
                    pause_us = (pause_us * 2).min(RESPONSE_POLL_MAX_US);
                }
                Err(error) => {
                    if !self.session.awaiting_response() {
                        return Err(ChannelError::Refused {
                            request: name,
                            error,
                        });
                    }
                    skipped += 1;
                    if skipped > MAX_SKIPPED_RESPONSES {
                        return Err(ChannelError::Unusable {
                            request: name,
                            count: skipped,
                            last: error,
                        });
                    }
                }
            }
        }
    }

    /// INITIALIZE → QUERY MAC → QUERY max frame → SET packet filter: what the device is.
    pub fn initialize(&mut self) -> Result<DeviceInfo, ChannelError> {
        let mut request = self.session.start();
        loop {
            let name = request_name(&request);
            match self.exchange(request)? {
                SessionEvent::Send(next) => request = next,
                SessionEvent::Ready(info) => return Ok(info),
                _ => {
                    return Err(ChannelError::Unexpected {
                        request: name,
                        what: "a completion of another kind",
                    })
                }
            }
        }
    }

    /// OID_GEN_MEDIA_CONNECT_STATUS: whether the medium is connected. A device refusing the
    /// query, or answering with an unusable value, is taken as connected (the link state is
    /// informational; data is tried anyway).
    pub fn query_link(&mut self) -> Result<bool, ChannelError> {
        let request = self
            .session
            .query(OID_GEN_MEDIA_CONNECT_STATUS)
            .map_err(|error| ChannelError::Refused {
                request: rndis::message_name(rndis::QUERY_MSG),
                error,
            })?;
        match self.exchange(request) {
            Ok(SessionEvent::QueryDone { info, .. }) => Ok(rndis::info_u32(
                rndis::message_name(QUERY_CMPLT),
                Field::InformationBufferLength,
                &info,
            )
            .map_or(true, |state| state == MEDIA_STATE_CONNECTED)),
            Ok(_) => Err(ChannelError::Unexpected {
                request: rndis::message_name(rndis::QUERY_MSG),
                what: "a completion of another kind",
            }),
            Err(ChannelError::Refused { .. }) if self.session.state() == SessionState::Ready => {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Reads what the device queued on its own (after RESPONSE_AVAILABLE): indications and
    /// keepalives, until it has nothing more, at most [`MAX_DRAINED_RESPONSES`].
    pub fn drain(&mut self) -> Result<(), ChannelError> {
        for _ in 0..MAX_DRAINED_RESPONSES {
            self.fetch("unsolicited message")?;
            if let Ok(Consumed::Nothing) = self.consume()? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The device sent data: it is alive, no keepalive is due (the RNDIS specification
    /// counts activity on either channel).
    pub fn device_active(&mut self) {
        self.last_heard_us = self.transport.now_us();
    }

    /// The host's KEEPALIVE once the device has been silent for [`KEEPALIVE_IDLE_US`]:
    /// Some(true) answered, Some(false) failed (counted; tried again after another idle
    /// period, since data may still flow), None not due or not possible now. Err only when a
    /// control transfer failed.
    pub fn keepalive_if_idle(&mut self) -> Result<Option<bool>, ChannelError> {
        let now = self.transport.now_us();
        if now.saturating_sub(self.last_heard_us) < KEEPALIVE_IDLE_US {
            return Ok(None);
        }
        let Ok(request) = self.session.keepalive() else {
            return Ok(None);
        };
        match self.exchange(request) {
            Ok(SessionEvent::KeepaliveDone) => {
                self.counters.host_keepalives += 1;
                Ok(Some(true))
            }
            Err(error @ ChannelError::Transfer { .. }) => Err(error),
            Ok(_) | Err(_) => {
                self.counters.keepalive_failures += 1;
                self.last_heard_us = self.transport.now_us();
                Ok(Some(false))
            }
        }
    }
}
