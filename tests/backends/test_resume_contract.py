"""The backend contract for resume records (issue 10, item 1), on every store in STORES:
a joiner's record lives as long as its room's keys (three presence TTLs, so a member
whose instance died can resume until it is reaped), is extended by the same refresh, and
is gone once its session leaves. Only the token's hash is ever given to the backend."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from rendezvous.backends.base import Member, ResumeRecord, ResumeRefusedError
from rendezvous.resuming import mint_resume_token
from tests.backends.conftest import Cluster

SHORT_TTL_SECONDS = 0.5
EXPIRY_WAIT_SECONDS = 2 * SHORT_TTL_SECONDS  # twice the TTL: an unrefreshed member is gone
RECORD_TTLS = 3  # a resume record lives as long as the room's keys: 3 presence TTLs


def resumable(user_id: str) -> Member:
    """A fresh session of `user_id` holding a resume token (its hash is on the member)."""
    _, resume_hash = mint_resume_token()
    return Member(user_id, user_id.title(), secrets.token_hex(8), resume_hash)


def record_of(member: Member, instance_id: str) -> ResumeRecord:
    return ResumeRecord(member.user_id, member.username, member.session_id, instance_id, False)


async def test_join_writes_a_resume_record_any_instance_can_read(cluster: Cluster) -> None:
    home = await cluster.instance()
    elsewhere = await cluster.instance()
    alice = resumable("alice")
    await home.backend.join("r1", alice, capacity=10)
    expected = record_of(alice, home.backend.instance_id)
    assert await elsewhere.backend.resume_record("r1", alice.resume_hash) == expected
    # The record is the room's: the same hash means nothing in another room.
    assert await elsewhere.backend.resume_record("r2", alice.resume_hash) is None
    assert await elsewhere.backend.resume_record("r1", secrets.token_hex(32)) is None


async def test_a_member_without_a_resume_hash_gets_no_record(cluster: Cluster) -> None:
    home = await cluster.instance()
    plain = Member("bob", "Bob", secrets.token_hex(8))
    await home.backend.join("r1", plain, capacity=10)
    assert await home.backend.resume_record("r1", "") is None


async def test_leave_deletes_the_resume_record(cluster: Cluster) -> None:
    home = await cluster.instance()
    alice, bob = resumable("alice"), resumable("bob")
    await home.backend.join("r1", alice, capacity=10)
    await home.backend.join("r1", bob, capacity=10)
    assert await home.backend.leave("r1", alice)
    assert await home.backend.resume_record("r1", alice.resume_hash) is None
    assert await home.backend.resume_record("r1", bob.resume_hash) is not None


async def test_a_replaced_session_leaving_still_deletes_its_own_record(cluster: Cluster) -> None:
    home = await cluster.instance()
    old, new = resumable("alice"), resumable("alice")
    await home.backend.join("r1", old, capacity=10)
    await home.backend.join("r1", new, capacity=10)
    assert not await home.backend.leave("r1", old)  # replaced: not announced...
    assert await home.backend.resume_record("r1", old.resume_hash) is None  # ...but spent
    assert await home.backend.resume_record("r1", new.resume_hash) == record_of(
        new, home.backend.instance_id
    )


async def test_resume_record_expires_unless_refreshed(cluster: Cluster) -> None:
    ttl = 0.5
    keeper = await cluster.instance(presence_ttl_seconds=ttl)
    reader = await cluster.instance()
    kept, dropped = resumable("kept"), resumable("dropped")
    await keeper.backend.join("r1", kept, capacity=10)
    await keeper.backend.join("r1", dropped, capacity=10)
    loop = asyncio.get_running_loop()
    until = loop.time() + 2 * RECORD_TTLS * ttl
    while loop.time() < until:
        await asyncio.sleep(ttl / 5)
        await keeper.backend.refresh([("r1", kept)])
    assert await reader.backend.resume_record("r1", kept.resume_hash) is not None
    assert await reader.backend.resume_record("r1", dropped.resume_hash) is None
    await asyncio.sleep(2 * RECORD_TTLS * ttl)  # refreshing stopped: it goes too
    assert await reader.backend.resume_record("r1", kept.resume_hash) is None


async def test_refresh_of_a_replaced_session_does_not_extend_its_record(
    cluster: Cluster,
) -> None:
    a = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    old, new = resumable("alice"), resumable("alice")
    await a.backend.join("r1", old, capacity=10)
    await a.backend.join("r1", new, capacity=10)
    loop = asyncio.get_running_loop()
    until = loop.time() + RECORD_TTLS * EXPIRY_WAIT_SECONDS
    while loop.time() < until:
        await a.backend.refresh([("r1", old)])  # a stale session still refreshing
        await asyncio.sleep(SHORT_TTL_SECONDS / 5)
    assert await a.backend.resume_record("r1", old.resume_hash) is None


# Holding, claiming and releasing (stage 2): each atomic, so a resume and the grace
# timeout, or a resume and the reaper, never both win.


def successor(of: Member) -> Member:
    """The member a resuming connection presents: same user, a fresh resume hash."""
    return resumable(of.user_id)


async def test_claim_spends_the_token_and_gives_the_session_a_new_one(cluster: Cluster) -> None:
    home = await cluster.instance()
    other = await cluster.instance()
    alice = resumable("alice")
    await home.backend.join("r1", alice, capacity=10)
    await home.backend.hold("r1", alice, grace_seconds=10)
    nxt = successor(alice)
    claimed = await other.backend.claim_resume("r1", alice.resume_hash, nxt)
    assert claimed == ResumeRecord(
        "alice", "Alice", alice.session_id, home.backend.instance_id, True
    )
    assert await home.backend.resume_record("r1", alice.resume_hash) is None
    assert await home.backend.resume_record("r1", nxt.resume_hash) == ResumeRecord(
        "alice", "Alice", alice.session_id, other.backend.instance_id, False
    )
    with pytest.raises(ResumeRefusedError) as spent:
        await other.backend.claim_resume("r1", alice.resume_hash, successor(alice))
    assert not spent.value.foreign
    assert await home.backend.members("r1") == (alice,)  # the same session, present


async def test_another_users_claim_is_refused_and_spends_nothing(cluster: Cluster) -> None:
    home = await cluster.instance()
    alice = resumable("alice")
    await home.backend.join("r1", alice, capacity=10)
    with pytest.raises(ResumeRefusedError) as refused:
        await home.backend.claim_resume("r1", alice.resume_hash, resumable("mallory"))
    assert refused.value.foreign
    with pytest.raises(ResumeRefusedError):  # the same token in another room: unknown
        await home.backend.claim_resume("r2", alice.resume_hash, successor(alice))
    await home.backend.claim_resume("r1", alice.resume_hash, successor(alice))


async def test_a_left_or_replaced_session_cannot_be_claimed(cluster: Cluster) -> None:
    home = await cluster.instance()
    left, old = resumable("left"), resumable("alice")
    await home.backend.join("r1", left, capacity=10)
    await home.backend.leave("r1", left)
    await home.backend.join("r1", old, capacity=10)
    await home.backend.join("r1", resumable("alice"), capacity=10)  # replaces `old`
    for gone in (left, old):
        with pytest.raises(ResumeRefusedError):
            await home.backend.claim_resume("r1", gone.resume_hash, successor(gone))


async def test_claim_restores_an_expired_member_the_reaper_has_not_taken(
    cluster: Cluster,
) -> None:
    dead = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    survivor = await cluster.instance()
    alice = resumable("alice")
    await dead.backend.join("r1", alice, capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)  # nobody refreshes: expired, not reaped
    assert await survivor.backend.members("r1") == ()
    await survivor.backend.claim_resume("r1", alice.resume_hash, successor(alice))
    assert await survivor.backend.members("r1") == (alice,)
    assert await survivor.reap("r1") == []


async def test_a_reaped_member_cannot_be_claimed(cluster: Cluster) -> None:
    dead = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    survivor = await cluster.instance()
    alice = resumable("alice")
    await dead.backend.join("r1", alice, capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    assert await survivor.reap("r1") == [("r1", alice)]
    with pytest.raises(ResumeRefusedError):
        await survivor.backend.claim_resume("r1", alice.resume_hash, successor(alice))


async def test_claim_racing_the_reaper_never_both_win(cluster: Cluster) -> None:
    dead = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    reaper = await cluster.instance()
    resumer = await cluster.instance()
    members = [resumable(f"user-{n}") for n in range(20)]
    for m in members:
        await dead.backend.join("r1", m, capacity=50)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    await reaper.backend.subscribe("r1")

    async def claim(m: Member) -> bool:
        try:
            await resumer.backend.claim_resume("r1", m.resume_hash, successor(m))
        except ResumeRefusedError:
            return False
        return True

    reaping = asyncio.create_task(reaper.backend.reap_expired())
    claims = await asyncio.gather(*(claim(m) for m in members))
    reaped = await reaping
    reaped_users = {m.user_id for _, m in reaped}
    claimed_users = {m.user_id for m, won in zip(members, claims, strict=True) if won}
    assert reaped_users.isdisjoint(claimed_users)
    assert reaped_users | claimed_users == {m.user_id for m in members}
    present = {m.user_id for m in await reaper.backend.members("r1")}
    assert present == claimed_users


async def test_hold_cuts_the_record_to_the_grace_and_refresh_no_longer_extends_it(
    cluster: Cluster,
) -> None:
    ttl, grace = 1.0, 0.4
    home = await cluster.instance(presence_ttl_seconds=ttl)
    alice = resumable("alice")
    await home.backend.join("r1", alice, capacity=10)
    await home.backend.hold("r1", alice, grace_seconds=grace)
    assert (await home.backend.resume_record("r1", alice.resume_hash)).held  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    until = loop.time() + 2 * grace
    while loop.time() < until:
        await home.backend.refresh([("r1", alice)])  # the holder keeps its presence
        await asyncio.sleep(grace / 5)
    assert await home.backend.resume_record("r1", alice.resume_hash) is None
    assert await home.backend.members("r1") == (alice,)


async def test_release_removes_a_held_member_unless_it_was_claimed(cluster: Cluster) -> None:
    home = await cluster.instance()
    alice, bob = resumable("alice"), resumable("bob")
    for m in (alice, bob):
        await home.backend.join("r1", m, capacity=10)
        await home.backend.hold("r1", m, grace_seconds=10)
    await home.backend.claim_resume("r1", bob.resume_hash, successor(bob))
    assert await home.backend.release_held("r1", alice)
    assert not await home.backend.release_held("r1", bob)  # resumed: it stays
    assert await home.backend.members("r1") == (bob,)
    assert not await home.backend.release_held("r1", alice)  # once only


# A held session's buffer in the store, and the echoed publish (stage 3).


async def test_a_held_buffer_keeps_the_newest_entries_and_is_taken_once(cluster: Cluster) -> None:
    holder = await cluster.instance()
    taker = await cluster.instance()
    frames = [(seq, b'{"seq-less":%d}' % seq) for seq in range(1, 41)]
    await holder.backend.keep_held("r1", "s1", frames[:25], max_entries=10, ttl_seconds=10)
    await holder.backend.keep_held("r1", "s1", frames[25:], max_entries=10, ttl_seconds=10)
    taken = await taker.backend.take_held("r1", "s1")
    # At least the newest ten (Redis trims approximately), in order, ending with the last.
    assert len(taken) >= 10 and taken == frames[-len(taken) :]
    assert await taker.backend.take_held("r1", "s1") == []


async def test_a_held_buffer_expires(cluster: Cluster) -> None:
    holder = await cluster.instance()
    await holder.backend.keep_held("r1", "s1", [(1, b"{}")], max_entries=10, ttl_seconds=0.3)
    await asyncio.sleep(0.6)
    assert await holder.backend.take_held("r1", "s1") == []


async def test_publish_to_all_is_heard_by_its_publisher_too_in_order(cluster: Cluster) -> None:
    a = await cluster.instance()
    b = await cluster.instance()
    for instance in (a, b):
        await instance.backend.subscribe("r1")
    a.backend.publish("r1", b"before")
    a.backend.publish_to_all("r1", b"marker")
    a.backend.publish("r1", b"after")
    assert [(await b.receive())[1] for _ in range(3)] == [b"before", b"marker", b"after"]
    assert await a.receive() == ("r1", b"marker")
    await a.expect_nothing()
