using KvPacket.Core.Memory;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Core.Tests;

public class MappedFileTests
{
    [Fact]
    public void Released_pages_read_back_the_same_bytes()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "data.bin");
        var bytes = new byte[5 * 4096 + 123];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
        using var file = new MappedFile(path);
        Assert.Equal(bytes, file.Bytes(0, bytes.Length).ToArray()); // touched, resident

        file.Release(1000, 3 * 4096);            // the whole pages inside go; the partial ones at the edges stay
        file.Release(-1, 10);                     // out of range: ignored, not an error
        file.Release(0, bytes.Length + 1);

        Assert.Equal(bytes, file.Bytes(0, bytes.Length).ToArray());
    }
}
