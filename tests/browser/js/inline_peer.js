// A minimal browser peer, without the demo page: ICE servers from /webrtc/config, the
// fake camera, signaling over the service's WebSocket with trickle ICE and targeted
// messages. `me` is the token's user id. The peer given `offerTo` offers (with a data
// channel named "chat"); the other answers. Each greets the other over the channel once
// it opens. Resolves once the WebSocket is open. State: window.peer.
async ({ token, room, me, offerTo }) => {
  const response = await fetch('/webrtc/config', {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!response.ok) throw new Error(`/webrtc/config answered ${response.status}`);
  const pc = new RTCPeerConnection(await response.json());
  const camera = await navigator.mediaDevices.getUserMedia({ video: true });
  camera.getTracks().forEach((track) => pc.addTrack(track, camera));

  const peer = (window.peer = { pc, me, other: offerTo, joined: false, received: [], errors: [] });
  const ws = new WebSocket(`ws://${location.host}/webrtc/ws/${room}?token=${token}`);
  const send = (type, payload) =>
    ws.send(JSON.stringify({ type, payload: { ...payload, target_user_id: peer.other } }));
  const useChannel = (channel) => {
    channel.onmessage = (event) => peer.received.push(event.data);
    channel.onopen = () => channel.send(`hello from ${peer.me}`);
  };
  pc.onicecandidate = (event) =>
    send('ice_candidate', event.candidate ? event.candidate.toJSON() : { candidate: '' });
  pc.ondatachannel = (event) => useChannel(event.channel);

  const handle = async (message) => {
    switch (message.type) {
      case 'room_state':
        peer.joined = true;
        if (offerTo) {
          useChannel(pc.createDataChannel('chat'));
          await pc.setLocalDescription();
          send('offer', pc.localDescription.toJSON());
        }
        break;
      case 'offer':
        peer.other = message.sender_id;
        await pc.setRemoteDescription(message.payload);
        await pc.setLocalDescription();
        send('answer', pc.localDescription.toJSON());
        break;
      case 'answer':
        await pc.setRemoteDescription(message.payload);
        break;
      case 'ice_candidate':
        await pc.addIceCandidate(message.payload);
        break;
      case 'error':
        peer.errors.push(message.payload.code);
        break;
    }
  };
  ws.onmessage = (event) =>
    handle(JSON.parse(event.data)).catch((error) => peer.errors.push(String(error)));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onclose = (event) => reject(new Error(`WebSocket closed: ${event.code}`));
  });
};
