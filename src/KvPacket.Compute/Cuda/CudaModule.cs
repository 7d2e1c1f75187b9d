namespace KvPacket.Compute.Cuda;

/// <summary>A loaded module: its kernels by name, and a launcher that checks every launch.</summary>
public sealed unsafe class CudaModule
{
    private readonly CudaDevice _device;
    private readonly nint _module;
    private readonly Dictionary<string, nint> _functions = new();

    internal CudaModule(CudaDevice device, nint module)
    {
        _device = device;
        _module = module;
    }

    /// <summary>The kernel called <paramref name="name"/>.</summary>
    public nint Function(string name)
    {
        if (!_functions.TryGetValue(name, out nint function))
        {
            CudaDriver.Check(CudaDriver.cuModuleGetFunction(out function, _module, name), $"cuModuleGetFunction({name})");
            _functions[name] = function;
        }
        return function;
    }

    /// <summary>Queues kernel <paramref name="function"/> on the device's stream; <paramref name="arguments"/> point at each argument's value.</summary>
    public void Launch(nint function, (uint X, uint Y) grid, uint block, params ReadOnlySpan<nint> arguments) => Launch(function, (grid.X, grid.Y, 1), block, arguments);

    /// <summary>Queues kernel <paramref name="function"/> over a three-dimensional grid.</summary>
    public void Launch(nint function, (uint X, uint Y, uint Z) grid, uint block, params ReadOnlySpan<nint> arguments)
    {
        fixed (nint* pointers = arguments)
            CudaDriver.Check(CudaDriver.cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block, 1, 1, 0, _device.Stream, (void**)pointers, null), "cuLaunchKernel");
    }
}
