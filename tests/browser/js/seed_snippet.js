// Get WebRTC config
const response = await fetch('http://localhost:8000/webrtc/config', {
  headers: { 'Authorization': `Bearer ${token}` }
});
const config = await response.json();

// Create peer connection
const pc = new RTCPeerConnection(config);

// Connect to signaling server
const ws = new WebSocket(`ws://localhost:8000/webrtc/ws/my-room?token=${token}`);

ws.onmessage = async (event) => {
  const message = JSON.parse(event.data);
  
  switch (message.type) {
    case 'room_state':
      console.log('Room participants:', message.payload.participants);
      break;
      
    case 'offer':
      await pc.setRemoteDescription(message.payload);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      ws.send(JSON.stringify({
        type: 'answer',
        payload: answer,
        room_id: 'my-room'
      }));
      break;
      
    case 'ice_candidate':
      await pc.addIceCandidate(message.payload);
      break;
  }
};

pc.onicecandidate = (event) => {
  if (event.candidate) {
    ws.send(JSON.stringify({
      type: 'ice_candidate',
      payload: event.candidate,
      room_id: 'my-room'
    }));
  }
};
