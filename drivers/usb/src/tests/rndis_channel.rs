//! The RNDIS control channel against a fake device that answers like QEMU 7.2's usb-net (one
//! zero byte when nothing is queued) and can be told to be slow, silent, chatty or hostile.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::host::TransferError;
use crate::rndis::*;
use crate::rndis_channel::*;

use super::rndis_device::{
    indicate, init_cmplt, keepalive as device_keepalive, le, query_cmplt, words,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A device on the other end of the control pipe, with a clock the channel's sleeps advance.
struct FakeDevice {
    /// Messages queued for GET_ENCAPSULATED_RESPONSE.
    queued: VecDeque<Vec<u8>>,
    /// Every message the host sent.
    sent: Vec<Vec<u8>>,
    /// Polls answered "nothing" before each completion becomes visible.
    polls_before_answer: u32,
    polls_left: u32,
    /// Whether the device answers requests at all.
    answers: bool,
    /// Messages the device queues before each completion (keepalives, indications, junk).
    before_answer: Vec<Vec<u8>>,
    /// Status and information buffer of the media-connect query's completion.
    media: (u32, Vec<u8>),
    init_status: u32,
    /// Messages every GET_ENCAPSULATED_RESPONSE returns once the queue is empty (a flood).
    flood: Option<Vec<u8>>,
    fetch_error: Option<TransferError>,
    now_us: u64,
    sleeps: Vec<u64>,
}

impl FakeDevice {
    fn qemu() -> Self {
        FakeDevice {
            queued: VecDeque::new(),
            sent: Vec::new(),
            polls_before_answer: 0,
            polls_left: 0,
            answers: true,
            before_answer: Vec::new(),
            media: (STATUS_SUCCESS, words(&[MEDIA_STATE_CONNECTED])),
            init_status: STATUS_SUCCESS,
            flood: None,
            fetch_error: None,
            now_us: 0,
            sleeps: Vec::new(),
        }
    }

    fn completion(&self, message: &[u8]) -> Option<Vec<u8>> {
        let id = le(message, 8);
        match le(message, 0) {
            INITIALIZE_MSG => Some(init_cmplt(id, self.init_status)),
            QUERY_MSG => Some(match le(message, 12) {
                OID_802_3_PERMANENT_ADDRESS => query_cmplt(id, STATUS_SUCCESS, &MAC),
                OID_GEN_MAXIMUM_FRAME_SIZE => query_cmplt(id, STATUS_SUCCESS, &words(&[1514])),
                OID_GEN_MEDIA_CONNECT_STATUS => query_cmplt(id, self.media.0, &self.media.1),
                _ => query_cmplt(id, STATUS_NOT_SUPPORTED, &[]),
            }),
            SET_MSG => Some(words(&[SET_CMPLT, 16, id, STATUS_SUCCESS])),
            KEEPALIVE_MSG => Some(words(&[KEEPALIVE_CMPLT, 16, id, STATUS_SUCCESS])),
            _ => None, // the host's KEEPALIVE_CMPLT, HALT: no completion
        }
    }

    fn sent_types(&self) -> Vec<u32> {
        self.sent.iter().map(|m| le(m, 0)).collect()
    }
}

impl ControlTransport for FakeDevice {
    fn send(&mut self, message: &[u8]) -> Result<(), TransferError> {
        self.sent.push(message.to_vec());
        if let Some(completion) = self.completion(message).filter(|_| self.answers) {
            self.queued.extend(self.before_answer.iter().cloned());
            self.queued.push_back(completion);
            self.polls_left = self.polls_before_answer;
        }
        Ok(())
    }

    fn fetch(&mut self, buffer: &mut [u8]) -> Result<usize, TransferError> {
        if let Some(error) = self.fetch_error.clone() {
            return Err(error);
        }
        let next = if self.polls_left > 0 {
            self.polls_left -= 1;
            None
        } else {
            self.queued.pop_front().or_else(|| self.flood.clone())
        };
        let message = next.unwrap_or_else(|| vec![0]);
        let len = message.len().min(buffer.len());
        buffer[..len].copy_from_slice(&message[..len]);
        Ok(len)
    }

    fn now_us(&self) -> u64 {
        self.now_us
    }

    fn sleep_us(&mut self, us: u64) {
        self.sleeps.push(us);
        self.now_us += us;
    }
}

fn ready(device: FakeDevice) -> ControlChannel<FakeDevice> {
    let mut channel = ControlChannel::new(device, RndisSession::new(2048));
    channel.initialize().expect("initialization");
    channel
}

#[test]
fn initializes_like_qemu() {
    let mut channel = ControlChannel::new(FakeDevice::qemu(), RndisSession::new(2048));
    let info = channel.initialize().unwrap();
    assert_eq!(info.mac, MAC);
    assert_eq!(info.init.max_transfer_size, 1580);
    assert_eq!(info.max_tx_frame(), 1514 + 4);
    assert!(channel.query_link().unwrap());
    assert_eq!(
        channel.transport().sent_types(),
        [INITIALIZE_MSG, QUERY_MSG, QUERY_MSG, SET_MSG, QUERY_MSG]
    );
    // The host offered its receive buffer as MaxTransferSize.
    assert_eq!(le(&channel.transport().sent[0], 20), 2048);
    assert_eq!(channel.session.state(), SessionState::Ready);
    assert!(channel.transport().sleeps.is_empty());
}

#[test]
fn a_slow_device_is_polled_with_a_growing_bounded_pause() {
    let mut device = FakeDevice::qemu();
    device.polls_before_answer = 12;
    let channel = ready(device);
    let sleeps = &channel.transport().sleeps;
    assert_eq!(&sleeps[..4], [50, 100, 200, 400]);
    assert!(sleeps.iter().all(|&s| s <= RESPONSE_POLL_MAX_US));
    assert!(sleeps.contains(&RESPONSE_POLL_MAX_US));
    // Every one of the four requests waited its 12 polls, none timed out.
    assert_eq!(sleeps.len(), 4 * 12);
}

#[test]
fn a_silent_device_times_out_and_the_request_is_abandoned() {
    let mut device = FakeDevice::qemu();
    device.answers = false;
    let mut channel = ControlChannel::new(device, RndisSession::new(2048));
    match channel.initialize() {
        Err(ChannelError::NoResponse { request, waited_ms }) => {
            assert_eq!(request, "REMOTE_NDIS_INITIALIZE_MSG");
            assert!((2000..2100).contains(&waited_ms), "{waited_ms}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(channel.session.state(), SessionState::Failed);
    assert!(!channel.session.awaiting_response());
}

#[test]
fn device_messages_while_waiting_are_handled() {
    let mut device = FakeDevice::qemu();
    device.before_answer = vec![
        device_keepalive(0x77),
        indicate(STATUS_MEDIA_DISCONNECT, &[]),
        indicate(0x4001_0012, &[]), // some other status, ignored
    ];
    let mut channel = ready(device);
    assert_eq!(channel.counters.device_keepalives, 4);
    assert_eq!(channel.counters.indications, 8);
    assert_eq!(channel.session.link_up(), Some(false));
    // Each device KEEPALIVE was answered with its own RequestId and success.
    let answers: Vec<&Vec<u8>> = channel
        .transport()
        .sent
        .iter()
        .filter(|m| le(m, 0) == KEEPALIVE_CMPLT)
        .collect();
    assert_eq!(answers.len(), 4);
    assert!(answers
        .iter()
        .all(|m| le(m, 8) == 0x77 && le(m, 12) == STATUS_SUCCESS));
    assert!(channel.query_link().unwrap());
}

#[test]
fn stale_and_corrupt_responses_are_skipped_up_to_a_limit() {
    let mut device = FakeDevice::qemu();
    device.before_answer = vec![
        words(&[SET_CMPLT, 16, 0xdead, STATUS_SUCCESS]), // someone else's completion
        words(&[QUERY_CMPLT, 0xffff_ff00, 1, 0, 0, 0]),  // MessageLength beyond the bytes
        vec![0xff; 7],
    ];
    let channel = ready(device);
    assert_eq!(channel.counters.responses_dropped, 4 * 3);

    let mut device = FakeDevice::qemu();
    device.before_answer = vec![words(&[SET_CMPLT, 16, 0xdead, STATUS_SUCCESS]); 9];
    let mut channel = ControlChannel::new(device, RndisSession::new(2048));
    match channel.initialize() {
        Err(ChannelError::Unusable { count, .. }) => assert_eq!(count, MAX_SKIPPED_RESPONSES + 1),
        other => panic!("{other:?}"),
    }
    assert!(!channel.session.awaiting_response());
}

#[test]
fn a_refused_initialization_ends_it() {
    let mut device = FakeDevice::qemu();
    device.init_status = STATUS_FAILURE;
    let mut channel = ControlChannel::new(device, RndisSession::new(2048));
    match channel.initialize() {
        Err(ChannelError::Refused { request, error }) => {
            assert_eq!(request, "REMOTE_NDIS_INITIALIZE_MSG");
            assert!(matches!(
                error,
                RndisError::Status {
                    status: STATUS_FAILURE,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(channel.session.state(), SessionState::Failed);
    assert_eq!(channel.transport().sent_types(), [INITIALIZE_MSG]);
}

#[test]
fn media_state_answers() {
    let cases: [((u32, Vec<u8>), bool); 4] = [
        ((STATUS_SUCCESS, words(&[MEDIA_STATE_DISCONNECTED])), false),
        ((STATUS_SUCCESS, words(&[MEDIA_STATE_CONNECTED])), true),
        // Not supported, or a 2-byte answer: taken as connected.
        ((STATUS_NOT_SUPPORTED, Vec::new()), true),
        ((STATUS_SUCCESS, vec![1, 0]), true),
    ];
    for (media, connected) in cases {
        let mut device = FakeDevice::qemu();
        device.media = media.clone();
        let mut channel = ready(device);
        assert_eq!(channel.query_link(), Ok(connected), "{media:?}");
        assert_eq!(channel.session.state(), SessionState::Ready);
    }
}

#[test]
fn transfer_errors_are_reported_with_the_step() {
    let mut channel = ready(FakeDevice::qemu());
    channel.transport_mut().fetch_error = Some(TransferError::Disconnected);
    match channel.query_link() {
        Err(ChannelError::Transfer { step, error, .. }) => {
            assert_eq!(step, "GET_ENCAPSULATED_RESPONSE");
            assert_eq!(error, TransferError::Disconnected);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn drain_reads_until_nothing_and_stops_on_a_flood() {
    let mut channel = ready(FakeDevice::qemu());
    let device = channel.transport_mut();
    device
        .queued
        .push_back(indicate(STATUS_MEDIA_DISCONNECT, &[]));
    device.queued.push_back(device_keepalive(5));
    device
        .queued
        .push_back(words(&[QUERY_CMPLT, 24, 99, 0, 0, 0])); // unsolicited
    channel.drain().unwrap();
    assert_eq!(channel.session.link_up(), Some(false));
    assert_eq!(channel.counters.device_keepalives, 1);
    assert_eq!(channel.counters.responses_dropped, 1);
    assert!(channel.transport().queued.is_empty());

    channel.transport_mut().flood = Some(indicate(STATUS_MEDIA_CONNECT, &[]));
    let before = channel.counters.indications;
    channel.drain().unwrap();
    assert_eq!(
        channel.counters.indications - before,
        u64::from(MAX_DRAINED_RESPONSES)
    );
    assert_eq!(channel.session.link_up(), Some(true));
}

#[test]
fn keepalive_after_idle_and_a_silent_device_does_not_wedge_the_session() {
    let mut channel = ready(FakeDevice::qemu());
    assert_eq!(channel.keepalive_if_idle(), Ok(None));
    channel.transport_mut().now_us += KEEPALIVE_IDLE_US;
    assert_eq!(channel.keepalive_if_idle(), Ok(Some(true)));
    assert_eq!(channel.counters.host_keepalives, 1);
    // Heard from just now: not due again.
    assert_eq!(channel.keepalive_if_idle(), Ok(None));
    // Data from the device counts as hearing from it.
    channel.transport_mut().now_us += KEEPALIVE_IDLE_US - 1;
    channel.device_active();
    channel.transport_mut().now_us += KEEPALIVE_IDLE_US - 1;
    assert_eq!(channel.keepalive_if_idle(), Ok(None));
    assert_eq!(channel.counters.host_keepalives, 1);

    // The device stops answering: one failure, counted; the session stays usable.
    channel.transport_mut().answers = false;
    channel.transport_mut().now_us += KEEPALIVE_IDLE_US;
    assert_eq!(channel.keepalive_if_idle(), Ok(Some(false)));
    assert_eq!(channel.counters.keepalive_failures, 1);
    assert_eq!(channel.session.state(), SessionState::Ready);
    assert_eq!(channel.keepalive_if_idle(), Ok(None));

    // It answers again (a late completion of the abandoned keepalive first: dropped).
    let device = channel.transport_mut();
    device.answers = true;
    let late_id = le(device.sent.last().unwrap(), 8);
    device
        .queued
        .push_back(words(&[KEEPALIVE_CMPLT, 16, late_id, STATUS_SUCCESS]));
    device.now_us += KEEPALIVE_IDLE_US;
    assert_eq!(channel.keepalive_if_idle(), Ok(Some(true)));
    assert_eq!(channel.counters.host_keepalives, 2);
    assert_eq!(channel.counters.responses_dropped, 1);
}
