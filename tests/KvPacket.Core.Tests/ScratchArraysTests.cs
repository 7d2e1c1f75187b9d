using KvPacket.Core.Memory;
using Xunit;

namespace KvPacket.Tests;

/// <summary>Scratch arrays: pooled while small, plain and collectable when large, and every one can be given back.</summary>
public class ScratchArraysTests
{
    private readonly record struct Wide(long A, long B, long C);   // 24 bytes: not a power of two

    [Fact]
    public void Small_arrays_come_back_from_the_pool_and_large_ones_are_fresh_and_returnable()
    {
        int pooled = ScratchArrays<int>.MaxPooledLength;
        Assert.Equal(1 << 18, pooled);   // 1 MiB of ints
        int[] small = ScratchArrays<int>.Rent(1000);
        ScratchArrays<int>.Return(small);
        Assert.Same(small, ScratchArrays<int>.Rent(1000));

        foreach (int length in new[] { pooled, pooled + 1, 3 * pooled / 2 + 7, 4 * pooled })
        {
            int[] array = ScratchArrays<int>.Rent(length);
            Assert.True(array.Length >= length);
            ScratchArrays<int>.Return(array);   // never "not associated with this pool"
        }
        int[] large = ScratchArrays<int>.Rent(pooled + 1);
        ScratchArrays<int>.Return(large);
        Assert.NotSame(large, ScratchArrays<int>.Rent(pooled + 1));   // not kept

        Assert.True(System.Numerics.BitOperations.IsPow2(ScratchArrays<Wide>.MaxPooledLength));
        foreach (int length in new[] { 100, ScratchArrays<Wide>.MaxPooledLength, ScratchArrays<Wide>.MaxPooledLength + 1, 50_000 })
            ScratchArrays<Wide>.Return(ScratchArrays<Wide>.Rent(length));
    }
}
