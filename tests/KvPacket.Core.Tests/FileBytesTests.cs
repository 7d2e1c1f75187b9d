using KvPacket.Core.Memory;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Core.Tests;

public class FileBytesTests
{
    private static byte[] Write(string path)
    {
        var bytes = new byte[5 * 4096 + 123];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
        return bytes;
    }

    [Fact]
    public void Mapped_pages_released_read_back_the_same_bytes()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "data.bin");
        var bytes = Write(path);
        using var file = FileBytes.Map(path);
        Assert.Equal(bytes, file.Bytes(0, bytes.Length).ToArray()); // touched, resident

        file.Release(1000, 3 * 4096);            // the whole pages inside go; the partial ones at the edges stay
        file.Release(-1, 10);                     // out of range: ignored, not an error
        file.Release(0, bytes.Length + 1);

        Assert.Equal(bytes, file.Bytes(0, bytes.Length).ToArray());
    }

    [Fact]
    public unsafe void A_loaded_file_holds_its_bytes_on_a_huge_page_boundary_and_outlives_the_file()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "data.bin");
        var bytes = Write(path);
        using var file = FileBytes.Load(path);
        File.Delete(path);
        Assert.True(file.IsLoaded);
        Assert.Equal(bytes.Length, file.Length);
        Assert.Equal(0, (long)file.Pointer % (2 << 20));
        Assert.Equal(bytes, file.Bytes(0, bytes.Length).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => file.Bytes(bytes.Length - 10, 11).Length);
    }

    [Fact]
    public void Released_pages_of_a_loaded_file_are_given_back_and_the_edges_stay()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "data.bin");
        var bytes = Write(path);
        using var file = FileBytes.Load(path);
        file.Release(1000, 3 * 4096); // the whole pages inside, 1 and 2, go (zeros when read); the partial pages 0 and 3 stay
        var after = file.Bytes(0, bytes.Length);
        Assert.Equal(bytes.AsSpan(0, 4096).ToArray(), after[..4096].ToArray());
        Assert.True(after[4096..(3 * 4096)].IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal(bytes.AsSpan(3 * 4096).ToArray(), after[(3 * 4096)..].ToArray());
    }

    [Fact]
    public void A_file_too_large_for_the_memory_given_is_mapped_instead()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "data.bin");
        var bytes = Write(path);
        using var mapped = FileBytes.Load(path, memoryBytes: bytes.Length); // more than three quarters of it
        using var loaded = FileBytes.Load(path, memoryBytes: 2L * bytes.Length);
        Assert.False(mapped.IsLoaded);
        Assert.True(loaded.IsLoaded);
        Assert.Equal(bytes, mapped.Bytes(0, bytes.Length).ToArray());
        Assert.Equal(bytes, loaded.Bytes(0, bytes.Length).ToArray());
    }
}
