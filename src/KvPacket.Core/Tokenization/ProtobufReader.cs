using System.Buffers.Binary;
using System.Text;

namespace KvPacket.Core.Tokenization;

/// <summary>A minimal protobuf wire-format reader: enough to walk a message's fields (varint, 64-bit, length-delimited, 32-bit).</summary>
internal ref struct ProtobufReader(ReadOnlySpan<byte> data, string file)
{
    private readonly ReadOnlySpan<byte> _data = data;
    private int _position;

    public bool AtEnd => _position >= _data.Length;

    /// <summary>The next field's number and wire type.</summary>
    public (int Field, int WireType) ReadTag()
    {
        ulong tag = ReadVarint();
        return ((int)(tag >> 3), (int)(tag & 7));
    }

    public ulong ReadVarint()
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (_position >= _data.Length) throw Truncated("varint");
            byte b = _data[_position++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return value;
        }
        throw new TokenizerFormatException(file, "protobuf", $"varint longer than 10 bytes at byte {_position}");
    }

    public ReadOnlySpan<byte> ReadBytes()
    {
        ulong length = ReadVarint();
        if (length > (ulong)(_data.Length - _position)) throw Truncated("length-delimited field");
        var span = _data.Slice(_position, (int)length);
        _position += (int)length;
        return span;
    }

    public string ReadString() => Encoding.UTF8.GetString(ReadBytes());

    public float ReadFloat()
    {
        if (_position + 4 > _data.Length) throw Truncated("float");
        float value = BinaryPrimitives.ReadSingleLittleEndian(_data[_position..]);
        _position += 4;
        return value;
    }

    /// <summary>Skips a field of <paramref name="wireType"/>.</summary>
    public void Skip(int wireType)
    {
        switch (wireType)
        {
            case 0: ReadVarint(); break;
            case 1: Advance(8); break;
            case 2: ReadBytes(); break;
            case 5: Advance(4); break;
            default: throw new TokenizerFormatException(file, "protobuf", $"unknown wire type {wireType} at byte {_position}");
        }
    }

    private void Advance(int count)
    {
        if (_position + count > _data.Length) throw Truncated("fixed field");
        _position += count;
    }

    private readonly TokenizerFormatException Truncated(string what) =>
        new(file, "protobuf", $"truncated in a {what} at byte {_position} of {_data.Length}");
}
