namespace KvPacket.Compute.Kv;

/// <summary>
/// One entry of a sequence's block table: slots [<see cref="FirstSlot"/>, FirstSlot + <see cref="Count"/>) of block
/// <see cref="Block"/> hold the keys and values of global positions [<see cref="FirstPosition"/>, FirstPosition + Count). Its keys were rotated at position
/// (global − <see cref="RotationOffset"/>): 0 for blocks computed in place, the packet's offset for a packet block
/// computed alone from position 0. Attention rotates the query by −RotationOffset instead of rewriting the keys, so
/// packet blocks stay shared and immutable (<see cref="ReadOnly"/>).
/// </summary>
/// <param name="Block">Block id in the pool.</param>
/// <param name="FirstPosition">Global position of slot <paramref name="FirstSlot"/>.</param>
/// <param name="Count">Filled slots.</param>
/// <param name="RotationOffset">Global position minus the position the keys were rotated at.</param>
/// <param name="ReadOnly">Whether the block is shared (a packet page) and must never be written.</param>
/// <param name="FirstSlot">First slot used: non-zero when only the tail of a packet block is placed (EPIC recomputes the head).</param>
public readonly record struct KvBlockEntry(int Block, int FirstPosition, int Count, int RotationOffset, bool ReadOnly, int FirstSlot = 0);
